"""Which of a running pair's tables stream and which are copied, and what its checkpoint stores of them."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from . import apply, state
from ._opening import OLD_ROWS, capture_gap
from .changes import dumps
from .errors import CdcError, ConfigError, SourceError
from .mapping import identity_change

logger = logging.getLogger("cdc.pipeline")  # the name `cdc run` prints with every line


class _Planning:
    """PairRunner's part that plans its tables (mixed into PairRunner, whose attributes it uses)."""

    # -- which tables stream, which are copied ------------------------------------------
    def _plan_tables(self, checkpoint: Any, position: Any) -> Any:
        """Split the mapping's tables into streamed ones and ones (still) to copy; returns the position.

        Capture must still cover every streamed table (SourceError otherwise). A table the checkpoint
        has neither as streamed nor in its snapshot progress (new to the pair, or removed once and
        added again) joins the stream (the source checks that capture
        covers it) and is copied. So is a table copied under another mapping identity (its target,
        columns, transforms, filter or key changed since): the rows its target has are not the rows
        the mapping now writes, or not there at all. A table no longer in the mapping is forgotten,
        and the checkpoint says so at once, so a table added back later is copied again rather
        than trusted.
        """
        self._require_sole_writer()
        self._identities = {t: m.identity() for t, m in self.mappings.items()}
        copied = checkpoint.tables if checkpoint is not None else {}
        stored = (checkpoint.snapshot or {}).get("tables", {}) if checkpoint is not None else {}
        remapped = self._remapped(copied, stored)
        self._streamed = [t for t in copied if t in self.mappings and t not in remapped]
        # Tables whose copy found rows in the target: kept in the checkpoint for `cdc status` until a repair.
        self._old_rows = {t for t in self._streamed if (copied[t] or {}).get(OLD_ROWS)}
        self._progress = {t: {**p, "mapping": self._identities[t]} for t, p in stored.items()
                          if t in self.mappings and t not in self._streamed and t not in remapped}
        self._require_capture()
        hashed = sorted({m.target for m in self.mappings.values() if m.spec.row_hashes})
        unhashed = sorted({m.target for m in self.mappings.values() if not m.spec.row_hashes} - set(hashed))
        dropped = self._retrying(lambda: apply.settle_row_hashes(self.target, self.pair.name, hashed, unhashed))
        if dropped:
            logger.info("pair %s: row hashes of %s dropped: their conflicts are not found by hash now", self.pair.name,
                        ", ".join(dropped))
        added = [t for t in self.mappings if t not in self._streamed and t not in self._progress]
        if checkpoint is not None:
            self._refuse_copy_over_conflicts(sorted(set(added) | set(remapped)), "mapping changed, or added back")
        if added:
            position = self._retrying(lambda: self.source.join_stream(position, added))
            self._progress.update({t: {"after": None, "done": False, "rows": 0, "mapping": self._identities[t]}
                                   for t in added})
        if self._streamed:
            new = [t for t in added if t not in remapped]
            if new:
                logger.info("pair %s: copying added table(s) %s while %s stream", self.pair.name, ", ".join(new),
                            ", ".join(self._streamed))
            for progress in self._progress.values():
                progress["direct"] = False  # the stream may write rows before the snapshot reaches them
        for table in self._warn_of_old_rows(added, remapped):
            self._progress[table][OLD_ROWS] = True
        if checkpoint is not None:
            snapshot, tables = self._to_commit()
            if not checkpoint.tables_recorded or checkpoint.tables != tables \
                    or dumps(checkpoint.snapshot) != dumps(snapshot) or dumps(checkpoint.position) != dumps(position):
                self._retrying(lambda: apply.advance(self.target, self.pair.name, position, snapshot=snapshot,
                                                     tables=tables))
        return position

    def _require_sole_writer(self) -> None:
        """ConfigError when another pair's checkpoint in this target writes one of this pair's target
        tables (a pair of another config file: one config's pairs are checked against each other
        when it is loaded) and the two do not both mark it shared: each would overwrite and delete
        the other's rows, and which rows survived would depend on the order they ran in."""
        writers = self.target.other_writers(self.pair.name)
        for mapping in self.mappings.values():
            clash = [other for other, shared in writers.get(mapping.target, ())
                     if not (shared and mapping.spec.shared)]
            if clash:
                raise ConfigError(
                    f"pair {self.pair.name}: target table {mapping.target} is also written by pair "
                    f"{', '.join(sorted(set(clash)))} (its checkpoint in {self.pair.target.name} says so): two pairs "
                    "writing one table overwrite and delete each other's rows. Mark the table `shared: true` with a "
                    "constant key column in both mappings (README: Shared target tables), or write another table; "
                    f"if pair {clash[0]} no longer runs, remove its checkpoint: DELETE FROM cdc_checkpoints WHERE "
                    f"pair = '{clash[0]}' in the target ({mapping.spec.origin})")

    def _require_capture(self) -> None:
        """SourceError (the words of `cdc status`) when capture no longer covers a streamed table:
        streaming on would skip its changes without a word. Tables still to copy are checked by
        ``join_stream``."""
        if not self._streamed:
            return
        uncovered = self._retrying(lambda: self.source.uncaptured(self._streamed))
        gap = capture_gap(self.pair, uncovered, self._streamed)
        if gap:
            raise SourceError(gap)

    def _refuse_copy_over_conflicts(self, tables: list[str], why: str) -> None:
        """CdcError when a table about to be copied again (``why``: `--resnapshot`, its mapping changed,
        added back) has an open conflict: the copy would write the source's rows over keys nothing may
        move until a person decides."""
        if not tables:
            return
        conflicts = state.conflicts
        with self.target.reading() as conn:
            found = conn.execute(sa.select(conflicts.c.source_table, sa.func.count()).where(
                conflicts.c.pair == self.pair.name, conflicts.c.status == "open",
                conflicts.c.source_table.in_(tables)).group_by(conflicts.c.source_table)).all()
        if found:
            named = ", ".join(f"{table} ({count})" for table, count in sorted(found))
            raise CdcError(f"pair {self.pair.name}: table(s) {named} would be copied again ({why}), and "
                           f"{sum(count for _, count in found)} conflict(s) are open on them (`cdc conflicts list "
                           "CONFIG`): the copy would write the source's rows over keys that nothing may move until a "
                           "person decides; resolve them first (`cdc conflicts resolve ID --take source|target`), "
                           "then run again")

    def _remapped(self, copied: dict[str, dict | None], stored: dict[str, dict]) -> dict[str, str]:
        """Tables copied (or being copied) under another mapping identity than the mapping's now,
        with why; each is said loudly, since the next commit forgets its old copy."""
        remapped = {}
        for table in self.mappings:
            if table in copied or table in stored:
                was = copied[table] if table in copied else stored[table].get("mapping")
                why = identity_change(was, self._identities[table])
                if why:
                    remapped[table] = why
        for table, why in remapped.items():
            old = (copied.get(table) or stored.get(table, {}).get("mapping") or {}).get("target")
            left = f"; target table {old} is no longer written and keeps its rows" \
                if old not in (None, self.mappings[table].target) else ""
            logger.warning("pair %s: table %s was copied under another mapping (%s%s): copying it again into %s",
                           self.pair.name, table, why, left, self.mappings[table].target)
        return remapped

    def _warn_of_old_rows(self, added: list[str], remapped: dict[str, str]) -> list[str]:
        """Say so when a table to copy already has rows in its target (say, it was in the pair
        before, or its mapping changed): the copy updates them and adds the missing ones, but a row
        the source deleted meanwhile (or one the mapping no longer writes) stays. Returns those
        tables: the checkpoint keeps the fact (``old_rows``) so `cdc status` says it until a
        `cdc reconcile --repair` of the table."""
        found = []
        for table in added:
            target = self.mappings[table].target
            if not self._streamed and table not in remapped:
                continue  # the first snapshot: a target with rows is the user's own doing, as before
            if self.target.exists(target) and not self.target.is_empty(target):
                logger.warning("pair %s: target table %s already has rows; the copy of %s updates them and adds the "
                               "missing ones but does not remove rows the source no longer has (or the mapping no "
                               "longer writes): once it streams, run `cdc reconcile CONFIG --pair %s --table %s "
                               "--repair`", self.pair.name, target, table, self.pair.name, table)
                found.append(table)
        return found

    def _to_commit(self) -> tuple[dict | None, dict[str, dict]]:
        """The snapshot progress and the streamed tables (with their mapping identities) the next
        checkpoint stores.

        During the first snapshot nothing streams yet and every table's progress is kept until all
        are copied; after it, a table whose copy is done moves from the progress to the streamed tables.
        """
        copying = {t: p for t, p in self._progress.items() if not p["done"]}
        if not self._streamed and copying:
            return {"tables": _copy(self._progress)}, {}
        streamed = sorted(set(self._streamed) | {t for t, p in self._progress.items() if p["done"]})
        old = self._old_rows | {t for t, p in self._progress.items() if p.get(OLD_ROWS)}
        return ({"tables": _copy(copying)} if copying else None), \
            {t: {**self._identities[t], **({OLD_ROWS: True} if t in old else {})} for t in streamed}

    def _settle(self, tables: dict[str, dict]) -> None:
        """After a commit that stored ``tables`` as streamed: their progress is no longer kept."""
        if tables:
            self._streamed = list(tables)
            self._old_rows |= {t for t, identity in tables.items() if identity.get(OLD_ROWS)}
            self._progress = {t: p for t, p in self._progress.items() if t not in tables}


def _copy(progress: dict[str, dict]) -> dict[str, dict]:
    return {t: dict(p) for t, p in progress.items()}
