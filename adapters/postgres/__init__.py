"""The PostgreSQL adapter: logical (pgoutput), trigger and timestamp capture; batched upserts as a target."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from .capabilities import CAPABILITIES
from .identity import identity as database_identity
from .fingerprint import PostgresFingerprints
from .logical import LogicalSource
from .source import TimestampSource
from .target import PostgresTarget
from .trigger import TriggerSource


class PostgresAdapter:
    """Capabilities and factories of the PostgreSQL adapter (driver: psycopg 3)."""

    capabilities = CAPABILITIES

    def database_exists(self, connection_url: str) -> bool:
        """Always True: connecting never creates a PostgreSQL database (a missing one fails to connect)."""
        return True

    def identity(self, connection_url: str) -> tuple:
        """(host, port, database) as libpq connects (see identity.py)."""
        return database_identity(connection_url)

    def source(self, connection_url: str, pair: Any) -> LogicalSource | TriggerSource | TimestampSource:
        engine = sa.create_engine(connection_url, pool_pre_ping=True)
        if pair.capture == "timestamp":
            made = TimestampSource(engine, pair.name, pair.timestamp, pair.source_timezone)
        elif pair.capture == "trigger":
            made = TriggerSource(engine, pair.name)
        else:
            made = LogicalSource(engine, pair.name)
        made.fingerprints = PostgresFingerprints()
        made.capabilities = CAPABILITIES
        return made

    def target(self, connection_url: str) -> PostgresTarget:
        made = PostgresTarget(sa.create_engine(connection_url, pool_pre_ping=True))
        made.fingerprints = PostgresFingerprints()
        made.capabilities = CAPABILITIES
        return made


adapter = PostgresAdapter()
