"""Load and validate a sync-pair config file; ${ENV} interpolation keeps secrets out of it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from . import _yaml, registry
from .errors import ConfigError
from .mapping import MappingSpec, identity_spec, load_mapping

CAPTURE_MODES = ("trigger", "timestamp", "logical", "binlog")
ON_ERROR = ("park", "stop")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A plain scheme means our default driver, as a DBA would expect.
_DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg",
                    "mysql": "mysql+pymysql", "mariadb": "mysql+pymysql"}


@dataclass(frozen=True)
class Connection:
    """A named database connection; ``url`` may carry a password, so print ``masked``."""

    name: str
    url: str

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()


@dataclass(frozen=True)
class TimestampOptions:
    """Settings of capture `timestamp`: the change-time column, overlap, soft delete."""

    column: str
    soft_delete: str | None = None
    overlap_seconds: float = 60.0


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


@dataclass(frozen=True)
class Config:
    """A whole config file: connections and pairs, validated."""

    path: Path
    connections: dict[str, Connection]
    pairs: dict[str, Pair]

    def select(self, pair: str | None) -> list[Pair]:
        """All pairs, or the one named; an unknown name is a ConfigError."""
        if pair is None:
            return list(self.pairs.values())
        if pair not in self.pairs:
            raise ConfigError(f"no pair named {pair!r} in {self.path.name} (pairs: {', '.join(self.pairs) or 'none'})")
        return [self.pairs[pair]]


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def load_url(text: str) -> str:
    """A URL as a DBA writes it, with our default driver for a plain scheme."""
    url = make_url(text)
    if url.drivername in _DEFAULT_DRIVERS:
        url = url.set(drivername=_DEFAULT_DRIVERS[url.drivername])
    return url.render_as_string(hide_password=False)


def load_config(path: str | os.PathLike) -> Config:
    """Read, interpolate and validate a config file; raises ConfigError naming file and line."""
    path = Path(path)
    doc = _yaml.load(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "the config must be a mapping with 'connections' and 'pairs'")
    _known_keys(doc, (), doc.data, {"connections", "pairs"})
    connections = _connections(doc)
    pairs = {name: _pair(doc, name, connections) for name in _section(doc, "pairs")}
    return Config(path, connections, pairs)


def _section(doc: _yaml.Document, key: str) -> dict:
    value = doc.data.get(key)
    if not isinstance(value, dict) or not value:
        raise doc.error((key,), f"'{key}' must be a non-empty mapping")
    return value


def _known_keys(doc: _yaml.Document, keys: tuple, value: dict, allowed: set[str]) -> None:
    for key in value:
        if key not in allowed:
            raise doc.error(keys + (key,), f"unknown key {key!r} (expected one of {', '.join(sorted(allowed))})")


def _interpolate(doc: _yaml.Document, keys: tuple, text: str) -> str:
    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise doc.error(keys, f"environment variable {name} is not set and has no default (write ${{{name}:-value}})")

    return _ENV.sub(replace, text)


def _connections(doc: _yaml.Document) -> dict[str, Connection]:
    result = {}
    for name, raw in _section(doc, "connections").items():
        keys = ("connections", name)
        if not isinstance(raw, str):
            raise doc.error(keys, "must be a database URL such as sqlite:///erp.db")
        url = _normalise_url(doc, keys, _interpolate(doc, keys, raw))
        result[name] = Connection(name, url)
    return result


def _normalise_url(doc: _yaml.Document, keys: tuple, text: str) -> str:
    try:
        url = make_url(text)
    except ArgumentError:
        raise doc.error(keys, f"{mask_url(text)!r} is not a database URL") from None
    if url.drivername in _DEFAULT_DRIVERS:
        url = url.set(drivername=_DEFAULT_DRIVERS[url.drivername])
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        if not os.path.isabs(url.database):
            # Relative SQLite paths are relative to the config file, not the shell.
            url = url.set(database=str((doc.path.parent / url.database).resolve()))
    return url.render_as_string(hide_password=False)


_PAIR_KEYS = {"source", "target", "capture", "tables", "mapping", "batch_size", "snapshot_chunk",
              "poll_interval", "on_error", "source_timezone", "timestamp", "claim_timeout"}


def _pair(doc: _yaml.Document, name: str, connections: dict[str, Connection]) -> Pair:
    keys = ("pairs", name)
    raw = doc.data["pairs"][name]
    if not isinstance(raw, dict):
        raise doc.error(keys, "a pair must be a mapping with source, target and tables or mapping")
    _known_keys(doc, keys, raw, _PAIR_KEYS)
    source = _connection_ref(doc, keys + ("source",), raw, connections)
    target = _connection_ref(doc, keys + ("target",), raw, connections)
    capture = _capture(doc, keys, raw, source)
    return Pair(
        name=name, source=source, target=target, capture=capture,
        mapping=_mapping(doc, keys, raw),
        batch_size=_number(doc, keys, raw, "batch_size", int, 1000),
        snapshot_chunk=_number(doc, keys, raw, "snapshot_chunk", int, 5000),
        poll_interval=float(_number(doc, keys, raw, "poll_interval", float, 1.0)),
        on_error=_choice(doc, keys, raw, "on_error", ON_ERROR, "stop"),
        source_timezone=_timezone(doc, keys, raw),
        timestamp=_timestamp(doc, keys, raw, capture),
        claim_timeout=float(_number(doc, keys, raw, "claim_timeout", float, 30.0)),
    )


def _connection_ref(doc, keys, raw, connections) -> Connection:
    ref = raw.get(keys[-1])
    if ref is None:
        raise doc.error(keys, "required")
    if ref not in connections:
        raise doc.error(keys, f"unknown connection {ref!r} (connections: {', '.join(connections)})")
    return connections[ref]


def _choice(doc, keys, raw, key, choices, default):
    value = raw.get(key, default)
    if value not in choices:
        raise doc.error(keys + (key,), f"{value!r} is not one of {', '.join(choices)}")
    return value


def _capture(doc, keys, raw, source: Connection) -> str:
    adapter = registry.adapter_for(source.url)
    if not adapter.capture_modes:
        raise doc.error(keys + ("source",), f"the {adapter.name} adapter cannot be a source yet (it can be a target)")
    capture = _choice(doc, keys, raw, "capture", CAPTURE_MODES, adapter.capture_modes[0])
    if capture not in adapter.capture_modes:
        raise doc.error(keys + ("capture",), f"capture {capture!r} is not supported by the {adapter.name} adapter "
                        f"(supported: {', '.join(adapter.capture_modes)})")
    return capture


def _number(doc, keys, raw, key, kind, default):
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or value <= 0 \
            or (kind is int and value != int(value)):
        raise doc.error(keys + (key,), f"{value!r} is not a positive {'whole ' if kind is int else ''}number")
    return kind(value)


def _timezone(doc, keys, raw) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    zone = raw.get("source_timezone", "UTC")
    try:
        ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise doc.error(keys + ("source_timezone",), f"{zone!r} is not a time zone name such as Europe/Oslo") from None
    return str(zone)


def _timestamp(doc, keys, raw, capture) -> TimestampOptions | None:
    value = raw.get("timestamp")
    if capture != "timestamp":
        if value is not None:
            raise doc.error(keys + ("timestamp",), "only used with capture: timestamp")
        return None
    tkeys = keys + ("timestamp",)
    if not isinstance(value, dict) or "column" not in value:
        raise doc.error(tkeys, "capture: timestamp needs timestamp: {column: <updated_at column>}")
    _known_keys(doc, tkeys, value, {"column", "soft_delete", "overlap_seconds"})
    overlap = _number(doc, tkeys, value, "overlap_seconds", float, 60.0)
    return TimestampOptions(str(value["column"]), value.get("soft_delete"), float(overlap))


def _mapping(doc, keys, raw) -> MappingSpec:
    has_tables, has_mapping = "tables" in raw, "mapping" in raw
    if has_tables == has_mapping:
        raise doc.error(keys, "give either 'tables: [..]' (identity mapping) or 'mapping: <file>', not both or neither")
    if has_tables:
        tables = raw["tables"]
        if not isinstance(tables, list) or not tables or not all(isinstance(t, str) for t in tables):
            raise doc.error(keys + ("tables",), "must be a non-empty list of table names")
        return identity_spec(tables, origin=doc.where(keys + ("tables",)))
    file = raw["mapping"]
    if not isinstance(file, str):
        raise doc.error(keys + ("mapping",), "must be the path of a mapping file")
    mapping_path = (doc.path.parent / file).resolve()
    if not mapping_path.exists():
        raise doc.error(keys + ("mapping",), f"mapping file {file!r} not found (looked in {mapping_path.parent})")
    return load_mapping(mapping_path)
