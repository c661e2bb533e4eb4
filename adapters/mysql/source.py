"""MySQL/MariaDB as a source: what every capture mode shares, and capture `timestamp` (binlog: binlog.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from .._timestamp import TimestampCapture
from .._sql import SqlSource
from . import sql, types

UTC = dt.timezone.utc


class MySQLSource(SqlSource):
    """What every MySQL/MariaDB capture mode shares: JSON columns, zones, session settings."""

    def __init__(self, engine: sa.Engine, pair: str, source_zone: str = "UTC"):
        super().__init__(engine, pair)
        self.source_zone = source_zone

    def reflected(self, table: sa.Table) -> None:
        with self.engine.connect() as conn:
            sql.mark_json_columns(conn, table)

    #: DATE/DATETIME/TIMESTAMP columns may hold '0000-00-00' (sql_mode allowing): always fit-checked.
    zero_dates = True
    #: Snapshot chunks can go to a PostgreSQL target as COPY text made by the server (copy_out).
    copy_target, copy_format = "postgresql", "text"

    def copy_compatible(self, table: str, target_types: dict[str, str | None]) -> bool:
        """Whether every column can go as COPY text into these target types (format_type) with
        the values the row path would write, and the key is integers (chunks ordered alike on
        both sides: no text collation involved)."""
        with self.engine.connect() as conn:
            facts = {r[0]: tuple(r[1:]) for r in conn.exec_driver_sql(sql.COPY_COLUMNS, {"table": table})}
        if any(facts.get(k, ("",))[0] not in sql.INTEGERS for k in self.keys.get(table, ())):
            return False
        expressions = self._copy_expressions(facts, target_types)
        return expressions is not None

    def _copy_expressions(self, facts: dict, target_types: dict[str, str | None]) -> list[str] | None:
        found = []
        for name, target_type in target_types.items():
            if name not in facts or target_type is None:
                return None
            expression = sql.copy_text_expression(name, facts[name], target_type, self.source_zone == "UTC")
            if expression is None:
                return None
            found.append(expression)
        return found

    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> type as MySQL writes it (``COLUMN_TYPE``: ``decimal(12,2)``, ``int unsigned``)."""
        with self.engine.connect() as conn:
            return {r[0]: r[2] for r in conn.exec_driver_sql(sql.COPY_COLUMNS, {"table": table})}

    def copy_out(self, table: str, columns: list[str], key: tuple[str, ...], after_key: tuple | None, limit: int,
                 write, target_types: dict[str, str | None] | None = None) -> None:
        """One keyed chunk as PostgreSQL COPY text, each line made by the server: PyMySQL decodes one
        string per row instead of a value per column."""
        cache = self.__dict__.setdefault("_copy_sql", {})
        if table not in cache:
            with self.engine.connect() as conn:
                facts = {r[0]: tuple(r[1:]) for r in conn.exec_driver_sql(sql.COPY_COLUMNS, {"table": table})}
            cache[table] = self._copy_expressions(facts, target_types or {})
        query = sql.copy_text_query(table, cache[table], key, after_key is not None, limit)
        with self.reading() as conn:
            rows = conn.execution_options(stream_results=True).exec_driver_sql(
                query, tuple(after_key) if after_key is not None else ())
            lines: list[str] = []
            for (line,) in rows:
                lines.append(line)
                if len(lines) >= 2000:
                    write("\n".join(lines) + "\n")
                    lines = []
            if lines:
                write("\n".join(lines) + "\n")

    def cascade_findings(self, level: str) -> list[tuple[str, str]]:
        """One finding at ``level`` per foreign key of a captured table whose ON DELETE/ON UPDATE
        CASCADE or SET NULL/DEFAULT changes its rows: InnoDB makes those changes itself, writing no
        row events to the binlog and firing no triggers, so neither binlog nor trigger capture sees them."""
        with self.engine.connect() as conn:
            found = conn.exec_driver_sql(sql.CASCADING_FOREIGN_KEYS).all()
        captured = {t.lower(): t for t in self.keys}
        return [(level, f"{captured[child.lower()]}: foreign key {name} (to {parent}) has "
                        f"{' and '.join(_cascading_rules(on_delete, on_update))}: the child rows the database changes "
                        "by it are not captured (InnoDB writes no binlog row events and fires no triggers for them), "
                        "so the target keeps them as they were. Make the foreign key RESTRICT or NO ACTION and delete "
                        "or update the child rows explicitly, or run `cdc reconcile CONFIG --table "
                        f"{captured[child.lower()]} --repair` after each cascade")
                for child, name, parent, on_delete, on_update in found if child.lower() in captured]

    def reader(self, column: sa.Column):
        """For values the driver read: its DATETIME/TIMESTAMP are already aware (sql.engine)."""
        if isinstance(column.type, sa.DateTime):
            return types.same
        return types.reader(column, self.source_zone)

    def log_reader(self, column: sa.Column):
        """For values decoded from the binlog or a changelog: naive DATETIME/TIMESTAMP get their zone."""
        return types.reader(column, self.source_zone)


def _cascading_rules(on_delete: str, on_update: str) -> list[str]:
    return [f"ON {event} {rule}" for event, rule in (("DELETE", on_delete), ("UPDATE", on_update))
            if rule in sql.CASCADING_RULES]


class TimestampSource(TimestampCapture, MySQLSource):
    """Capture `timestamp` on MySQL/MariaDB."""

    def __init__(self, engine: sa.Engine, pair: str, options: Any, source_zone: str = "UTC"):
        TimestampCapture.__init__(self, engine, pair, options, source_zone)

    def source_clock(self, conn: sa.Connection) -> dt.datetime:
        """The server's clock as epoch seconds: NOW() is a DATETIME, which the driver reads in source_timezone."""
        seconds = conn.exec_driver_sql(sql.SOURCE_CLOCK).scalar()
        return dt.datetime.fromtimestamp(float(seconds), UTC)

    def wall_clock(self, column: sa.Column) -> bool:
        """DATETIME and DATE hold wall-clock time; TIMESTAMP an instant (read as UTC)."""
        return not types.is_timestamp(column) and super().wall_clock(column)

    def bind_stamp(self, measure: float, column: sa.Column) -> Any:
        """Always naive: TIMESTAMP as UTC (every session runs with time_zone '+00:00', so the server
        compares it as that instant), DATETIME and DATE as wall-clock time."""
        return dt.datetime.fromtimestamp(measure, UTC).replace(tzinfo=None)
