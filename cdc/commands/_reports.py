"""The commands whose result is a report (cdc.reports formats it): `cdc reconcile` and `cdc audit`."""

from __future__ import annotations

import contextlib
from typing import Any

from ..config import Pair, load_config
from ..errors import ConfigError
from ..pipeline import OLD_ROWS, open_target


def _one_pair(config_path: str, pair: str | None) -> Pair:
    config = load_config(config_path)
    if pair is None:
        if len(config.pairs) != 1:
            raise ConfigError(f"{config_path} has {len(config.pairs)} pairs ({', '.join(config.pairs)}): "
                             "name one with --pair")
        return next(iter(config.pairs.values()))
    return config.select(pair)[0]


def reconcile(config_path: str, pair: str | None = None, *, table: str | None = None, where: str | None = None,
              limit: int = 100, settle: float = 3.0, repair: bool = False, dry_run: bool = False,
              wait: bool = False, progress=None):
    """Compare source (as mapped) and target; with ``repair`` make them equal (``dry_run``: only
    plan it). The report carries its provenance; the run is recorded in the target's
    cdc_reconcile_runs.

    A repair (not a dry run) holds the pair's claim from before the comparison to its last write,
    as `cdc run` does: ClaimHeldError (exit code 3) while a run holds the pair, or with ``wait``
    it waits for the run to stop. So no run writes between the repair's reads and its writes.
    """
    from .. import reconcile as reconcile_module

    chosen = _one_pair(config_path, pair)
    holding = reconcile_module.claimed(chosen, wait=wait) if repair and not dry_run else contextlib.nullcontext()
    with holding as target:
        report = _compare(config_path, chosen, table=table, where=where, limit=limit, settle=settle,
                          repair=repair, dry_run=dry_run, progress=progress)
        if repair and not report.equal:
            plan = reconcile_module.repair_plan(chosen, report)
            report.repair = {"dry_run": dry_run, "upserts": sum(op.op == "upsert" for op in plan.ops),
                             "deletes": sum(op.op == "delete" for op in plan.ops), "kept": plan.kept[:limit],
                             "plan": plan.describe(limit)}
            if not dry_run:
                done = reconcile_module.apply_repair(chosen, plan, target)
                report.repair.update(applied=done.applied, parked=done.parked,
                                     left=len(plan.ops) - done.applied - done.parked)
        if repair and not dry_run and where is None:  # whole tables compared and made equal
            target.forget_old_rows(chosen.name, [t.source_table for t in report.tables], OLD_ROWS)
    report.run_id = reconcile_module.record(chosen, report)
    return report


def _compare(config_path: str, chosen: Pair, *, table: str | None, where: str | None, limit: int, settle: float,
             repair: bool, dry_run: bool, progress) -> Any:
    """The comparison of ``chosen`` with its provenance (the reconcile report, before any repair)."""
    from .. import provenance
    from .. import reconcile as reconcile_module

    report = reconcile_module.reconcile(chosen, table=table, where=where, limit=limit, settle=settle,
                                        progress=progress)
    report.provenance = provenance.collect(
        config_path, [chosen], as_of={chosen.name: {"checkpoint": report.checkpoint, "pending": report.pending}},
        filters={"table": table, "where": where, "limit": limit, "settle": settle, "repair": repair,
                 "dry_run": dry_run}, generated_at=report.started_at)
    return report


def audit(config_path: str, pair: str | None = None, **filters):
    """The audit trail of the config's pairs (or one), from each target they write to, with its
    provenance (as of each pair's checkpoint)."""
    from .. import audit as audit_module
    from .. import provenance

    config = load_config(config_path)
    chosen = config.select(pair)
    by_target: dict[str, list[Pair]] = {}
    for p in chosen:
        by_target.setdefault(p.target.url, []).append(p)
    trails, as_of = [], {}
    for pairs in by_target.values():
        names = [p.name for p in pairs]
        target = open_target(pairs[0].target)
        try:
            trails.append(audit_module.trail(target, pairs=names, **filters))
            as_of.update(audit_module.checkpoints(target, names))
        finally:
            target.close()
    found = audit_module.merged(trails)
    found.provenance = provenance.collect(config_path, chosen, as_of=as_of, filters=filters)
    return found
