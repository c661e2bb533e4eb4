"""Setting pairs up and taking them down: `cdc init`, `cdc install`, `cdc uninstall`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .. import schema
from ..config import Pair, load_config
from ..errors import CdcError, TargetError
from ..pipeline import open_pair, open_source, open_target
from ._check import Report


def init(config_path: str, pair: str | None = None) -> Report:
    """Create or upgrade the state tables in each target and create missing target tables.

    All or nothing for the tables: every missing table of every selected pair is defined and
    checked against its target first (a type the target cannot declare stops `init` before it
    creates anything), then each target's tables, for all its pairs, are created together (see
    SqlTarget.create_tables).
    """
    config = load_config(config_path)
    report = Report()
    plans = [(p, _init_plan(p)) for p in config.select(pair)]
    for url in dict.fromkeys(p.target.url for p, _ in plans):
        pairs = [(p, tables) for p, tables in plans if p.target.url == url]
        target = open_target(pairs[0][0].target, create=True)
        try:
            before, after = target.init_state()
            verb = "already at" if before == after else ("created at" if before is None else f"upgraded {before} ->")
            report.add(f"{pairs[0][0].target.masked}: state tables {verb} version {after}")
            wanted = {t.name: t for _, tables in pairs for t, _ in tables.values() if t is not None}
            made = [t for t in wanted.values() if not target.exists(t.name)]
            for p, _ in pairs:
                _copy_again(p, target, {t.name for t in made}, report)
            target.create_tables(made)
            for _, tables in pairs:
                for name, (table, key) in tables.items():
                    created = any(table is t for t in made)
                    report.add(f"  {name}: created ({len(table.columns)} columns, key {key})" if created
                               else f"  {name}: exists, left as it is")
        finally:
            target.close()
    return report


def _copy_again(p: Pair, target: Any, made: set[str], report: Report) -> None:
    """Tables the pair's checkpoint streams (or is copying) whose target table `init` is about to
    make anew (it was dropped): the checkpoint forgets them first, under the pair's claim, so the
    next `cdc run` copies their rows into the new table rather than stream into an empty one."""
    checkpoint = target.checkpoint(p.name)
    if checkpoint is None:
        return
    recorded = {t: (identity or {}).get("target") for t, identity in checkpoint.tables.items()}
    recorded.update({t: (progress.get("mapping") or {}).get("target")
                     for t, progress in (checkpoint.snapshot or {}).get("tables", {}).items()})
    # Only a table copied into this very target table: one whose target changed is copied again anyway.
    tables = sorted(t for t, spec in p.mapping.tables.items()
                    if spec.target in made and t in recorded and recorded[t] in (None, spec.target))
    if not tables:
        return
    from .. import reconcile as reconcile_module

    with reconcile_module.claimed(p) as target:
        target.forget_tables(p.name, tables)
    report.add(f"  pair {p.name}: the next `cdc run` copies {', '.join(tables)} again (its target table is new)")


def _init_plan(p: Pair) -> dict[str, tuple[sa.Table | None, str]]:
    """Per target table of one pair: the table `init` must create (defined and checked against the
    target, not created), or None when it exists; and its key as the report names it."""
    source, target, mappings = open_pair(p, create=True)
    try:
        tables: dict[str, tuple[sa.Table | None, str]] = {}
        for name, mapping in mappings.items():
            key = ", ".join(schema.target_key(mapping))
            if target.exists(mapping.target):
                tables[mapping.target] = (None, key)
                continue
            columns = schema.target_columns(mapping, source.describe(name).columns)
            tables[mapping.target] = (target.table_definition(mapping.target, columns, schema.target_key(mapping),
                                                              source.backend), key)
        return tables
    finally:
        source.close()
        target.close()


def install(config_path: str, pair: str | None = None) -> Report:
    """Install capture (changelog + triggers, slot, ...) in each pair's source; idempotent.

    Capture of a table taken out of the pair is taken down, unless the pair's checkpoint still
    streams it (no `cdc run` has started since, or one started before is still running): its
    changes until then would be lost if the table came back before a run forgot it."""
    return _each_source(config_path, pair, "installed", lambda source, p: source.prepare(keep=_still_streamed(p)))


def _still_streamed(p: Pair) -> list[str]:
    """Tables no longer in the pair's mapping that its checkpoint streams or is copying (none when
    the target cannot be read or has no checkpoint: then nothing of it streams)."""
    try:
        target = open_target(p.target)
    except TargetError:
        return []
    try:
        checkpoint = target.checkpoint(p.name)
    except (CdcError, sa.exc.SQLAlchemyError):
        return []
    finally:
        target.close()
    if checkpoint is None:
        return []
    streamed = set(checkpoint.tables) | set((checkpoint.snapshot or {}).get("tables", {}))
    return sorted(streamed - set(p.mapping.tables))


def uninstall(config_path: str, pair: str | None = None) -> Report:
    """Remove what `install` created for each pair, and nothing else."""
    return _each_source(config_path, pair, "removed", lambda source, p: source.unprepare())


def _each_source(config_path: str, pair: str | None, verb: str, action) -> Report:
    config = load_config(config_path)
    report = Report()
    for p in config.select(pair):
        source, _ = open_source(p)
        try:
            done = action(source, p)
            report.add(f"pair {p.name} ({p.capture}, {p.source.masked}): "
                       f"{verb} {', '.join(done) if done else 'nothing to do'}")
        finally:
            source.close()
    return report
