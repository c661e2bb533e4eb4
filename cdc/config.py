"""Load and validate a sync-pair config file; ${ENV} interpolation keeps secrets out of it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, StrictBool

from . import _yaml, registry
from ._connections import SSL_MODES, Connection, connection, load_url, mask_url
from ._identity import database_identity
from ._mapping_file import Conflict
from ._service_config import Alert, DaemonOptions, daemon_options
from ._schema import PositiveNumber, PositiveWhole, Strict, TimeZone, checked, choice, did_you_mean, validate
from .errors import ConfigError
from .mapping import MappingSpec, TableSpec, identity_spec, load_mapping

CAPTURE_MODES = ("trigger", "timestamp", "logical", "binlog", "rowversion", "change_tracking")
ON_ERROR = ("park", "stop")
#: timestamp.unit: what a numeric change column counts (epoch time in a unit, or a version counter).
STAMP_UNITS = ("seconds", "milliseconds", "microseconds", "counter")

__all__ = ["Alert", "CAPTURE_MODES", "ON_ERROR", "SSL_MODES", "STAMP_UNITS", "Config", "Connection", "DaemonOptions",
           "Pair", "TimestampOptions",
           "load_config", "load_url", "mask_url"]


@dataclass(frozen=True)
class TimestampOptions:
    """Settings of capture `timestamp`: the change-time column, overlap, soft delete."""

    column: str
    soft_delete: str | None = None
    overlap_seconds: float = 60.0
    #: What a numeric change column counts: epoch seconds, milliseconds or microseconds (a clock the
    #: watermark is capped at), or counter (a version number, no clock). None for a date/time column.
    unit: str | None = None


@dataclass(frozen=True)
class Pair:
    """One sync pair: where changes come from, how they map, where they go."""

    name: str
    source: Connection
    target: Connection
    capture: str
    mapping: MappingSpec
    batch_size: int = 1000
    snapshot_chunk: int = 5000
    poll_interval: float = 1.0
    on_error: str = "stop"
    source_timezone: str = "UTC"
    timestamp: TimestampOptions | None = None
    claim_timeout: float = 30.0  # seconds without a heartbeat after which another process may take the pair
    conflict: str = "source_wins"  # the tables' conflict policy where the mapping names none
    newest: str | None = None  # newest_wins: the column compared
    detect_conflicts: bool = True  # compare target rows with what this pair last wrote
    hold_parked_keys: bool = True  # later changes to a parked or conflicted key wait behind it
    closed_before: dt.date | None = None  # changes to rows dated before it are parked for review


@dataclass(frozen=True)
class Config:
    """A whole config file: connections and pairs, validated."""

    path: Path
    connections: dict[str, Connection]
    pairs: dict[str, Pair]
    daemon: DaemonOptions = DaemonOptions()

    def select(self, pair: str | None) -> list[Pair]:
        """All pairs, or the one named; an unknown name is a ConfigError."""
        if pair is None:
            return list(self.pairs.values())
        if pair not in self.pairs:
            raise ConfigError(f"no pair named {pair!r} in {self.path.name}{did_you_mean(pair, self.pairs)} "
                              f"(pairs: {', '.join(self.pairs) or 'none'})")
        return [self.pairs[pair]]


# -- the config file's schema: every object forbids unknown keys -------------------------------


class _Timestamp(Strict):
    shape: ClassVar[str] = "capture: timestamp needs timestamp: {column: <updated_at column>}"
    column: str
    soft_delete: str | None = None
    overlap_seconds: PositiveNumber = 60.0
    unit: choice(*STAMP_UNITS) | None = None


class _Pair(Strict):
    shape: ClassVar[str] = "a pair must be a mapping with source, target and tables or mapping"
    source: str
    target: str
    capture: choice(*CAPTURE_MODES) | None = None
    tables: Annotated[list[str], Field(min_length=1)] | None = None
    mapping: str | None = None
    batch_size: PositiveWhole = 1000
    snapshot_chunk: PositiveWhole = 5000
    poll_interval: PositiveNumber = 1.0
    on_error: choice(*ON_ERROR) = "stop"
    source_timezone: TimeZone = "UTC"
    timestamp: _Timestamp | None = None
    claim_timeout: PositiveNumber = 30.0
    conflict: Conflict = ("source_wins", None)
    detect_conflicts: StrictBool = True
    hold_parked_keys: StrictBool = True
    closed_before: Annotated[dt.date, checked(_date)] | None = None


class _ConfigFile(Strict):
    shape: ClassVar[str] = "the config must be a mapping with 'connections' and 'pairs'"
    connections: Annotated[dict[str, Any], Field(min_length=1)]
    pairs: Annotated[dict[str, _Pair], Field(min_length=1)]
    daemon: dict[str, Any] | None = None
    alerts: list[Any] | None = None


# -- loading -----------------------------------------------------------------------------------
def load_config(path: str | os.PathLike) -> Config:
    """Read, interpolate and validate a config file and its mappings; ConfigError names file and line.

    Two mappings that write one target table are refused unless they provably write different
    rows (see _require_disjoint_writers).
    """
    path = Path(path)
    doc = _yaml.load(path)
    model = validate(doc, _ConfigFile, doc.data)
    connections = {name: connection(doc, name, raw) for name, raw in model.connections.items()}
    pairs = {name: _pair(doc, name, raw, connections) for name, raw in model.pairs.items()}
    _require_disjoint_writers(pairs)
    return Config(path, connections, pairs, daemon_options(doc, model.daemon, model.alerts))


def _pair(doc: _yaml.Document, name: str, model: _Pair, connections: dict[str, Connection]) -> Pair:
    keys = ("pairs", name)
    source = _connection_ref(doc, keys + ("source",), model.source, connections)
    target = _connection_ref(doc, keys + ("target",), model.target, connections)
    capture = _capture(doc, keys, model.capture, source)
    mapping = _with_pair_rules(doc, keys, _mapping(doc, keys, model), model, capture)
    return Pair(
        name=name, source=source, target=target, capture=capture, mapping=mapping,
        batch_size=model.batch_size, snapshot_chunk=model.snapshot_chunk, poll_interval=model.poll_interval,
        on_error=model.on_error, source_timezone=model.source_timezone,
        timestamp=_timestamp(doc, keys, model.timestamp, capture), claim_timeout=model.claim_timeout,
        conflict=model.conflict[0], newest=model.conflict[1], detect_conflicts=model.detect_conflicts,
        hold_parked_keys=model.hold_parked_keys, closed_before=model.closed_before,
    )


def _with_pair_rules(doc, keys, mapping: MappingSpec, model: _Pair, capture: str) -> MappingSpec:
    """Each table spec with the pair's conflict policy, detection, holding and closed period where
    the mapping sets none: after this a table spec holds every rule its changes are decided by."""
    tables = {}
    for name, spec in mapping.tables.items():
        inherits = spec.conflict is None
        period = spec.period or (spec.ledger.entry_date if spec.ledger else None)
        tables[name] = dataclasses.replace(
            spec, conflict=model.conflict[0] if inherits and spec.ledger is None else spec.conflict,
            newest=model.conflict[1] if inherits and spec.ledger is None else spec.newest,
            detect=model.detect_conflicts, hold=model.hold_parked_keys, period=period,
            closed_before=model.closed_before, row_hashes=model.detect_conflicts and capture == "timestamp",
            touches=model.detect_conflicts and capture == "timestamp")
    if model.closed_before is not None and not any(spec.period for spec in tables.values()):
        raise doc.error(keys + ("closed_before",), "no table of the pair names the date column closed periods are "
                        "judged by: give a table period: <target date column> (or ledger.entry_date) in the mapping")
    return dataclasses.replace(mapping, tables=tables)


def _date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime) or not isinstance(value, (dt.date, str)):
        raise ValueError(f"{value!r} is not a date such as 2026-01-01")
    try:
        return value if isinstance(value, dt.date) else dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date such as 2026-01-01") from None


def _connection_ref(doc, keys, ref: str, connections: dict[str, Connection]) -> Connection:
    if ref not in connections:
        raise doc.error(keys, f"unknown connection {ref!r}{did_you_mean(ref, connections)} "
                              f"(connections: {', '.join(connections)})")
    return connections[ref]


def _capture(doc, keys, capture: str | None, source: Connection) -> str:
    try:
        can = registry.adapter_for(source.url).capabilities_for(source.url)
    except ConfigError as exc:
        raise doc.error(keys + ("source",), str(exc)) from None
    if not can.capture_modes:
        raise doc.error(keys + ("source",), f"the {can.name} adapter cannot be a source yet (it can be a target)")
    capture = capture or can.capture_modes[0]
    if capture not in can.capture_modes:
        what = f"the {can.name} adapter" if can.name in can.backends else \
            f"a {can.backends[0]} database through the {can.name} adapter"  # ODBC: the database it reaches
        raise doc.error(keys + ("capture",), f"capture {capture!r} is not supported by {what} "
                        f"(supported: {', '.join(can.capture_modes)})")
    return capture


def _timestamp(doc, keys, model: _Timestamp | None, capture: str) -> TimestampOptions | None:
    if capture != "timestamp":
        if model is not None:
            raise doc.error(keys + ("timestamp",), "only used with capture: timestamp")
        return None
    if model is None:
        raise doc.error(keys + ("timestamp",), "capture: timestamp needs timestamp: {column: <updated_at column>}")
    return TimestampOptions(model.column, model.soft_delete, model.overlap_seconds, model.unit)


def _mapping(doc, keys, model: _Pair) -> MappingSpec:
    if (model.tables is None) == (model.mapping is None):
        raise doc.error(keys, "give either 'tables: [..]' (identity mapping) or 'mapping: <file>', not both or neither")
    if model.tables is not None:
        return identity_spec(model.tables, origin=doc.where(keys + ("tables",)))
    mapping_path = (doc.path.parent / model.mapping).resolve()
    if not mapping_path.exists():
        raise doc.error(keys + ("mapping",), f"mapping file {model.mapping!r} not found (looked in "
                                             f"{mapping_path.parent})")
    return load_mapping(mapping_path)


# -- one target table, several writers ---------------------------------------------------------
def _require_disjoint_writers(pairs: dict[str, Pair]) -> None:
    """ConfigError when two table mappings write one target table and their rows could meet.

    A pair's filter or delete would otherwise remove the rows another pair wrote, and which rows
    survive would depend on the order the pairs run. Allowed only when every writer says
    ``shared: true`` and all have a constant key column (``kilde: {constant: A}``, ``key: [id,
    kilde]``) whose value differs between them, so that no two writers can ever write one key.
    """
    _require_no_cycle(pairs)
    writers: dict[tuple, list[tuple[Pair, TableSpec]]] = {}
    for pair in pairs.values():
        for spec in pair.mapping.tables.values():
            writers.setdefault((database_identity(pair.target.url), spec.target.casefold()), []).append((pair, spec))
    for group in writers.values():
        if len(group) > 1:
            _check_shared(group)


def _require_no_cycle(pairs: dict[str, Pair]) -> None:
    """ConfigError when the pairs' table mappings form a cycle (a table that, through one or more pairs,
    writes back into itself): every change written would be captured again, for ever.

    A chain (A -> B by one pair, B -> C by another) is fine; A -> B -> A is not.
    """
    edges: dict[tuple, list[tuple[tuple, Pair, TableSpec]]] = {}
    for pair in pairs.values():
        for spec in pair.mapping.tables.values():
            start = (database_identity(pair.source.url), spec.source.casefold())
            end = (database_identity(pair.target.url), spec.target.casefold())
            edges.setdefault(start, []).append((end, pair, spec))
    done: set[tuple] = set()

    def walk(nodes: list[tuple], steps: list[tuple[tuple, Pair, TableSpec]]) -> None:
        for step in edges.get(nodes[-1], ()):
            if step[0] in nodes:
                _raise_cycle(steps[nodes.index(step[0]):] + [step])
            if step[0] not in done:
                walk(nodes + [step[0]], steps + [step])
        done.add(nodes[-1])

    for node in list(edges):
        if node not in done:
            walk([node], [])


def _raise_cycle(cycle: list[tuple[tuple, Pair, TableSpec]]) -> None:
    last_pair, last_spec = cycle[-1][1], cycle[-1][2]
    if len(cycle) == 1:
        raise ConfigError(f"pairs.{last_pair.name}: target table {last_spec.target} (connection "
                          f"{last_pair.target.name}) is the source table {last_spec.source} of pair {last_pair.name} in "
                          "the same database: every change written would be captured again, for ever. Write to "
                          f"another table or database ({last_spec.origin})")
    route = " -> ".join(f"pair {pair.name} writes {spec.source} into {spec.target} (connection {pair.target.name})"
                        for _, pair, spec in cycle)
    raise ConfigError(f"pairs.{last_pair.name}: the pairs write in a circle ({route}, which is where it started): every "
                      "change written would be captured again and sent round for ever. Break the circle: one of these "
                      f"tables must not be both written and read ({'; '.join(s.origin for _, _, s in cycle)})")


def _check_shared(group: list[tuple[Pair, TableSpec]]) -> None:
    (first, first_spec), (second, _) = group[0], group[1]
    table = f"target table {first_spec.target} (connection {first.target.name})"
    writers = " and ".join(f"pair {p.name} table {s.source}" for p, s in group)
    where = "; ".join(f"pair {p.name}: {s.origin}" for p, s in group)
    fix = ("mark it shared: true in each mapping, each with a constant key column of its own value, e.g. "
           "`kilde: {constant: A}` and `key: [id, kilde]` (see \"Shared target tables\" in the README)")
    if not all(spec.shared for _, spec in group):
        raise ConfigError(f"pairs.{second.name}: {table} is written by {writers}; which rows survive would depend "
                          f"on the order they run: {fix} ({where})")
    common = set.intersection(*(set(spec.key_constants) for _, spec in group))
    if not common:
        raise ConfigError(f"pairs.{second.name}: {table} is shared by {writers}, but they have no constant key "
                          f"column in common, so their keys could meet: {fix} ({where})")
    for column in sorted(common):
        values = [(pair, _constant(spec, column)) for pair, spec in group]
        clash = next(((a, b, v) for i, (a, v) in enumerate(values) for b, w in values[i + 1:]
                      if v == w or str(v) == str(w)), None)
        if clash is None:
            return
    a, b, value = clash
    raise ConfigError(f"pairs.{b.name}: {table} is shared, but pair {a.name} and pair {b.name} both write "
                      f"{column} = {value!r} into it, so their keys could meet: give each its own value ({where})")


def _constant(spec: TableSpec, column: str) -> Any:
    return next(c.transforms[0][1] for c in spec.columns if c.target == column)
