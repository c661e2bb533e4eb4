"""The reconciliation report's data: per table counts, the differing rows, control totals; recorded."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from .. import registry, state
from ..changes import dumps
from ..config import Pair
from ..errors import StateError
from ..reports import reconcile_dict as as_dict
from ._canonical import exact_sum

logger = logging.getLogger(__name__)


@dataclass
class RowDifference:
    """One key that differs: ``missing`` in the target, ``extra`` there, ``different`` columns, or a
    source row that is ``unmappable`` (its key is the source's then, ``error`` says why)."""

    kind: str
    key: tuple
    columns: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # column -> (source as mapped, target)
    #: The (account, period) control-total groups the row counts in, on either side.
    groups: set = field(default_factory=set, repr=False)
    #: Why a source row cannot be mapped (``unmappable``), with the column it names.
    error: str | None = None
    column: str | None = None
    #: For an ``extra`` row the source still has (its filter leaves it out): said so, and never deleted.
    note: str | None = None


@dataclass
class TableReport:
    source_table: str
    target_table: str
    source_rows: int = 0
    target_rows: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    settled: int = 0
    unmappable: int = 0
    #: So many keys differed that the counts come from the fingerprints (see MAX_ROW_CHECKS).
    counted_from_fingerprints: bool = False
    #: Differences (at most ``limit``) then source rows that cannot be mapped (at most ``limit``).
    rows: list[RowDifference] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    totals: list[dict] = field(default_factory=list)
    #: Every differing key: key text -> (source key, target key); for repair. A source key of None:
    #: the source was read and has no row with that key.
    keys: dict[str, tuple[tuple | None, tuple | None]] = field(default_factory=dict, repr=False)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.unmappable)

    @property
    def unlisted(self) -> int:
        """Differences and unmappable rows counted but not listed (over ``--limit``)."""
        return self.missing + self.extra + self.different + self.unmappable - len(self.rows)

    @property
    def totals_sum(self) -> dict | None:
        """The trial balance's grand total: counts, sums and differences over every group."""
        if not self.totals:
            return None
        result = {}
        for name in ("source_count", "target_count", "count_difference"):
            result[name] = sum(t[name] for t in self.totals)
        for name in ("source_sum", "target_sum", "difference"):
            result[name] = exact_sum(t[name] for t in self.totals)
        result["equal"] = all(t["equal"] for t in self.totals)
        return result


@dataclass
class ReconcileReport:
    pair: str
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    tables: list[TableReport] = field(default_factory=list)
    pending: Any = None
    limit: int = 100
    repair: dict | None = None
    run_id: int | None = None
    #: The pair's checkpoint when the comparison started (as the source writes positions), or None.
    checkpoint: str | None = None
    #: Who made the report, from what, and when (cdc.provenance); set by cdc.commands.
    provenance: Any = None

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


def record(pair: Pair, report: ReconcileReport) -> int | None:
    """Store the run in the target's ``cdc_reconcile_runs``; its id (None before `cdc init`)."""
    target = registry.adapter_for(pair.target.url).target(pair.target.url)
    try:
        with target.begin() as conn:
            try:
                state.ensure_current(conn)
            except StateError as exc:  # a target cdc does not manage (yet) can still be compared
                logger.warning("pair %s: the run is not recorded: %s", pair.name, exc)
                return None
            return state.write_reconcile_run(conn, {
                "pair": pair.name, "started_at": report.started_at, "finished_at": report.finished_at,
                "equal": report.equal, "tables": len(report.tables),
                "missing": sum(t.missing for t in report.tables), "extra": sum(t.extra for t in report.tables),
                "different": sum(t.different for t in report.tables),
                "repaired": None if report.repair is None else report.repair.get("applied"),
                "report": dumps(as_dict(report))})
    finally:
        target.close()
