"""Whether a changelog capture covers its tables: trigger faults, doctor's findings, join checks."""

from __future__ import annotations

import sqlalchemy as sa

from cdc.changes import Position
from cdc.errors import SourceError

from .consumers import Consumers


def trigger_fault(table: str, names: list[str], attached: dict[str, str]) -> str | None:
    """Why the capture triggers ``names`` of ``table`` do not log its changes, given the table each
    existing trigger is attached to (``attached``: trigger name -> table); None when all are on it.
    Table names compare without letter case (SQLite and MySQL may store them as first written)."""
    missing = [name for name in names if name not in attached]
    if missing:
        return f"trigger{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing (table dropped and made again?)"
    elsewhere = sorted({attached[n] for n in names if attached[n].casefold() != table.casefold()})
    if elsewhere:
        return (f"its triggers are attached to table {', '.join(elsewhere)} (the table was renamed and another "
                "put in its place?)")
    return None


class Coverage(Consumers):
    """A table is covered when `cdc install` registered it and its capture triggers log its changes."""

    #: The changelog table the capture triggers fill.
    changelog = "_cdc_changelog"

    def trigger_faults(self, conn: sa.Connection, tables: list[str]) -> dict[str, str]:
        """Per table of ``tables`` whose changes its triggers do not log, why: a trigger is missing
        (the table was dropped and made again, say from a dump), is attached to another table (the
        table was renamed away and another renamed in its place), or does not fire for every
        session (disabled). One query; read-only. The dialect's hook."""
        raise NotImplementedError

    def uncaptured(self, tables: list[str]) -> list[str]:
        """The tables `cdc install` has not registered, or whose capture triggers are not in working
        order (see ``trigger_faults``)."""
        with self.engine.connect() as conn:
            registered = self._registered(conn).get(self.pair, set())
            faults = self.trigger_faults(conn, [t for t in tables if t in registered])
        return [t for t in tables if t not in registered or t in faults]

    def join_stream(self, position: Position, tables: list[str]) -> Position:
        """The tables must be registered by `cdc install` and their triggers in working order."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            faults = self.trigger_faults(conn, tables)
        if faults:
            table, why = next(iter(faults.items()))
            raise SourceError(f"table {table} of pair {self.pair} is not covered by trigger capture, so its "
                              f"changes are not captured ({why}): run `cdc install CONFIG`, then `cdc run` "
                              "copies it")
        return position

    def diagnose(self) -> list[tuple[str, str]]:
        """(level, text) findings: capture installed (else nothing more is checked), each table's
        triggers, the changelog's size, then what holds the read horizon back."""
        with self.engine.connect() as conn:
            shared = self._changelog_findings(conn)
            if shared[0][0] == "fail":
                return shared
            found = self.table_findings(conn) + shared + self.horizon_findings(conn)
        return found + self.database_findings()

    def table_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """doctor's finding per table of the pair: its capture triggers log its changes (ok), or
        why they do not (fail, naming the fix)."""
        faults = self.trigger_faults(conn, list(self.keys))
        return [("fail", f"{table}: {faults[table]}: run `cdc install CONFIG`") if table in faults
                else ("ok", f"{table}: capture triggers installed") for table in self.keys]

    def horizon_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """The dialect's findings on what keeps a read from reaching recent changes (none by default)."""
        return []

    def database_findings(self) -> list[tuple[str, str]]:
        """The dialect's findings on the database itself, each on its own connection (none by default)."""
        return []

    def _changelog_findings(self, conn: sa.Connection) -> list[tuple[str, str]]:
        """Not installed (fail, and nothing else is worth checking), else the changelog's size
        (warn past a million rows not yet applied)."""
        try:
            self._require_installed(conn)
        except SourceError as exc:
            return [("fail", str(exc))]
        size = conn.execute(sa.text(f"SELECT count(*) FROM {self.changelog}")).scalar()
        return [("warn" if size > 1_000_000 else "ok", f"changelog holds {size:,} row(s) not yet applied by every pair")]
