"""The PostgreSQL adapter: logical (pgoutput), trigger and timestamp capture; batched upserts as a target."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .source import LogicalSource, TimestampSource
from .target import PostgresTarget
from .trigger import TriggerSource


class PostgresAdapter:
    """Capabilities and factories of the PostgreSQL adapter (driver: psycopg 3)."""

    name = "postgresql"
    backends = ("postgresql",)
    capture_modes = ("logical", "trigger", "timestamp")
    supports_in_db_checksum = True
    upsert_style = "on_conflict"

    def source(self, pair: Any) -> LogicalSource | TriggerSource | TimestampSource:
        engine = sa.create_engine(pair.source.url, pool_pre_ping=True)
        if pair.capture == "timestamp":
            return TimestampSource(engine, pair.name, pair.timestamp)
        if pair.capture == "trigger":
            return TriggerSource(engine, pair.name)
        return LogicalSource(engine, pair.name)

    def target(self, url: str) -> PostgresTarget:
        return PostgresTarget(sa.create_engine(url, pool_pre_ping=True))


adapter = PostgresAdapter()
