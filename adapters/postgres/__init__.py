"""The PostgreSQL adapter: logical (pgoutput), trigger and timestamp capture; batched upserts as a target."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .fingerprint import PostgresFingerprints
from .logical import LogicalSource
from .source import TimestampSource
from .target import PostgresTarget
from .trigger import TriggerSource


class PostgresAdapter:
    """Capabilities and factories of the PostgreSQL adapter (driver: psycopg 3)."""

    name = "postgresql"
    backends = ("postgresql",)
    capture_modes = ("logical", "trigger", "timestamp")
    supports_in_db_checksum = True
    upsert_style = "on_conflict"
    creates_database_on_connect = False

    def source(self, pair: Any) -> LogicalSource | TriggerSource | TimestampSource:
        engine = sa.create_engine(pair.source.url, pool_pre_ping=True)
        if pair.capture == "timestamp":
            made = TimestampSource(engine, pair.name, pair.timestamp, pair.source_timezone)
        elif pair.capture == "trigger":
            made = TriggerSource(engine, pair.name)
        else:
            made = LogicalSource(engine, pair.name)
        made.fingerprints = PostgresFingerprints()
        return made

    def target(self, url: str) -> PostgresTarget:
        made = PostgresTarget(sa.create_engine(url, pool_pre_ping=True))
        made.fingerprints = PostgresFingerprints()
        return made


adapter = PostgresAdapter()
