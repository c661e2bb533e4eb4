"""SQLite as a target: batched INSERT ... ON CONFLICT DO UPDATE and deletes, one transaction."""

from __future__ import annotations

from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert

from .._sql import SqlTarget
from . import types


class SqliteTarget(SqlTarget):
    """Binds its own values (see types.writer), so statements use untyped columns."""

    binds_own_values = True

    insert_on_conflict = staticmethod(insert)

    def writer(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.writer(column)

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.reader(column)

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        text = str(exc.orig).lower()
        if "locked" in text or "busy" in text:
            return "retry"
        return super().classify(exc)
