"""PostgreSQL as a target: batched INSERT ... ON CONFLICT DO UPDATE and deletes, one transaction."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from ..base import SqlTarget


class PostgresTarget(SqlTarget):
    """psycopg binds Decimal, aware datetimes, dates, bytes and UUIDs natively: no value rewriting."""

    def upsert(self, table: sa.TableClause, key: tuple[str, ...], columns: list[str]) -> sa.Executable:
        statement = insert(table)
        updates = {c: statement.excluded[c] for c in columns if c not in key}
        if not updates:
            return statement.on_conflict_do_nothing(index_elements=list(key))
        return statement.on_conflict_do_update(index_elements=list(key), set_=updates)

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        if isinstance(exc, sa.exc.OperationalError) or exc.connection_invalidated:
            return "retry"  # server restarted, connection lost, lock timeout: reconnect and retry
        return super().classify(exc)
