"""Checking a config without changing anything: `cdc check` and `cdc doctor`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import registry, state
from ..config import Pair, load_config
from ..errors import CdcError, RowError, StateError, TargetError
from ..mapping import TableMapping
from ..pipeline import open_pair, open_source, open_target


@dataclass
class Report:
    """Lines of what a command found or did, per pair."""

    lines: list[str] = field(default_factory=list)
    #: Per pair that could not be checked to the end, why (`cdc check` goes on with the next pair).
    failures: list[CdcError] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.lines.append(text)


def check(config_path: str, pair: str | None = None) -> Report:
    """Validate the config, connect to every database and check every mapped table; change nothing.

    Each mapping is checked against the source and (existing) target tables' columns and types.
    A database that connecting would create (a SQLite file) is not opened when it does not exist:
    `check` creates no file.
    """
    config = load_config(config_path)
    report = Report()
    for p in config.select(pair):
        report.add(f"pair {p.name}: source {p.source.masked} ({p.capture} capture), target {p.target.masked}")
        try:  # every pair is checked: an unreachable database or a wrong mapping of one hides no other's
            _check_pair(p, report)
        except CdcError as exc:
            report.add(f"  error: {exc.describe() if isinstance(exc, RowError) else exc}")
            report.failures.append(exc)
    return report


def _check_pair(p: Pair, report: Report) -> None:
    if _would_create(p.target.url):
        _check_without_target(p, report)
        return
    source, target, mappings = open_pair(p)
    try:
        for name, mapping in mappings.items():
            exists = target.exists(mapping.target)
            report.add(f"  {_table_line(name, mapping)}"
                       f"{'' if exists else '  [target table missing: cdc init creates it]'}")
        with target.reading() as conn:
            try:
                state.ensure_current(conn)
                report.add("  state tables: current")
            except StateError as exc:
                report.add(f"  state tables: {exc}")
    finally:
        source.close()
        target.close()


def _would_create(url: str) -> bool:
    """Whether connecting to ``url`` would create a database that does not exist yet."""
    adapter = registry.adapter_for(url)
    return adapter.capabilities.creates_database_on_connect and not adapter.database_exists(url)


def _check_without_target(p: Pair, report: Report) -> None:
    source, mappings = open_source(p)
    try:
        for name, mapping in mappings.items():
            report.add(f"  {_table_line(name, mapping)}  [target table missing: cdc init creates it]")
        report.add("  target database: does not exist yet: `cdc init CONFIG` creates it")
    finally:
        source.close()


def _table_line(name: str, mapping: TableMapping) -> str:
    shared = mapping.key_constants
    marks = f", shared ({', '.join(f'{c} = {v!r}' for c, v in shared.items())})" if shared else ""
    return f"{name} -> {mapping.target} key ({', '.join(mapping.source_key)}){marks}"


def doctor(config_path: str, pair: str | None = None) -> tuple[Report, bool]:
    """Check each source's settings for its capture mode; returns the report and whether all passed."""
    config = load_config(config_path)
    report, healthy = Report(), True
    for p in config.select(pair):
        report.add(f"pair {p.name}: {p.capture} capture on {p.source.masked}, target {p.target.masked}")
        try:
            source, _ = open_source(p)
        except CdcError as exc:  # the target's checks still run, and the next pair's
            source, findings = None, [("fail", str(exc))]
        else:
            findings = []
        try:
            target = open_target(p.target)
        except TargetError as exc:  # the source's checks still run: they tell what else to fix
            target = None
            findings.append(("fail", str(exc)))
        else:
            findings += target.diagnose()
        try:
            for level, text in (source.diagnose() if source is not None else []) + findings:
                healthy = healthy and level != "fail"
                report.add(f"  [{level.upper():>4}] {text}")
        finally:
            if source is not None:
                source.close()
            if target is not None:
                target.close()
    return report, healthy
