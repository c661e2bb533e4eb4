"""The consumers table of a changelog: which pairs `cdc install` registered, with which tables."""

from __future__ import annotations

import uuid
from typing import Any, Iterable

import sqlalchemy as sa

from cdc.changes import dumps, loads
from cdc.errors import SourceError

from .._sql import SqlSource


class Consumers(SqlSource):
    """Each pair a changelog serves is registered in ``consumers_table`` with its tables, an
    identity (generation) and the position it has acknowledged; the changelog is purged below the
    lowest acknowledged position, so one changelog serves every pair of the database."""

    #: The table in which `cdc install` registers each pair a changelog serves.
    consumers_table = "_cdc_consumers"
    #: The column of ``consumers_table`` holding the position each pair has acknowledged.
    acknowledged_column = "acked"
    #: The dialect's upsert of a pair's registration (SQLAlchemy text; binds :pair and :tables).
    register_sql = ""

    def _register(self, conn: sa.Connection, kept: list[str]) -> None:
        """Register the pair with its tables and those it keeps (idempotent), and give it an identity."""
        conn.execute(sa.text(self.register_sql), {"pair": self.pair, "tables": dumps(sorted({*self.keys, *kept}))})
        self._register_generation(conn)

    def _register_generation(self, conn: sa.Connection) -> None:
        """Give this pair's registration in the consumers table an identity, kept while the
        registration lives: `cdc uninstall` deletes it (and with the last pair the changelog), so
        the next `cdc install` makes a new one. Adds the column to an installation made before
        generations existed."""
        columns = {c["name"] for c in sa.inspect(conn).get_columns(self.consumers_table)}
        if "generation" not in columns:
            conn.exec_driver_sql(f"ALTER TABLE {self.consumers_table} ADD COLUMN generation VARCHAR(100)")
        conn.execute(sa.text(f"UPDATE {self.consumers_table} SET generation = :generation "
                             "WHERE pair = :pair AND generation IS NULL"),
                     {"generation": uuid.uuid4().hex, "pair": self.pair})

    def _registered_generation(self) -> str | None:
        """This pair's registration identity (None for an installation older than generations)."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            columns = {c["name"] for c in sa.inspect(conn).get_columns(self.consumers_table)}
            if "generation" not in columns:
                return None
            return conn.execute(sa.text(f"SELECT generation FROM {self.consumers_table} WHERE pair = :pair"),
                                {"pair": self.pair}).scalar()

    def _purged_through(self) -> Any:
        """The position up to which the changelog is purged (or is at the next acknowledge of any
        pair): the lowest position a registered pair has acknowledged."""
        with self.engine.connect() as conn:
            self._require_installed(conn)
            return self._acknowledged_by_all(conn)

    def _acknowledged_by_all(self, conn: sa.Connection) -> Any:
        """The lowest position a registered pair has acknowledged (None with no pair registered)."""
        return conn.execute(sa.text(f"SELECT min({self.acknowledged_column}) FROM {self.consumers_table}")).scalar()

    def _require_installed(self, conn: sa.Connection) -> None:
        """SourceError unless `cdc install` registered this pair, with every one of its tables."""
        row = None
        if sa.inspect(conn).has_table(self.consumers_table):
            row = conn.execute(sa.text(f"SELECT tables FROM {self.consumers_table} WHERE pair = :pair"),
                               {"pair": self.pair}).first()
        registered = () if row is None else row[0] if isinstance(row[0], list) else loads(row[0])  # jsonb or text
        if row is None or not set(self.keys) <= set(registered):
            missing = sorted(set(self.keys) - set(registered))
            raise SourceError(f"capture is not installed for pair {self.pair}: run `cdc install CONFIG` "
                              f"(table{'s' if len(missing) > 1 else ''} without capture: {', '.join(missing)})")

    def _registered(self, conn: sa.Connection) -> dict[str, set[str]]:
        """Per pair, the tables `cdc install` registered in ``consumers_table``."""
        if not sa.inspect(conn).has_table(self.consumers_table):
            return {}
        rows = conn.execute(sa.text(f"SELECT pair, tables FROM {self.consumers_table}")).all()
        return {pair: set(tables if isinstance(tables, list) else loads(tables)) for pair, tables in rows}

    def _no_longer_captured(self, conn: sa.Connection, keep: Iterable[str] = ()) -> list[str]:
        """Tables this pair registered before but no longer copies, that no other pair captures,
        that still exist and that are not to be kept: their triggers must go, or they log changes
        for nobody (and fail the table's writes once `cdc uninstall` dropped the changelog)."""
        registered = self._registered(conn)
        others = set().union(*[tables for pair, tables in registered.items() if pair != self.pair])
        gone = registered.get(self.pair, set()) - set(self.keys) - others - set(keep)
        return sorted(t for t in gone if sa.inspect(conn).has_table(t))

    def _kept(self, conn: sa.Connection, keep: Iterable[str]) -> list[str]:
        """The tables of ``keep`` this pair registered before: their triggers stay, and so does
        their registration, so a later `cdc install` still knows to take them down."""
        return sorted(set(keep) & self._registered(conn).get(self.pair, set()) - set(self.keys))

    def _unregister(self, conn: sa.Connection) -> set[str]:
        """Delete this pair's registration; the tables the pairs still registered capture."""
        conn.execute(sa.text(f"DELETE FROM {self.consumers_table} WHERE pair = :pair"), {"pair": self.pair})
        self._commit(conn)
        return set().union(*self._registered(conn).values())

    def _commit(self, conn: sa.Connection) -> None:
        """End the step so far (a dialect whose install runs outside one transaction commits here)."""
