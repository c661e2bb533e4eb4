"""The PostgreSQL adapter: logical (pgoutput), trigger and timestamp capture; batched upserts as a target."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ._network import network_settings
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

    def capabilities_for(self, connection_url: str):
        return CAPABILITIES

    def source(self, connection_url: str, pair: Any) -> LogicalSource | TriggerSource | TimestampSource:
        engine = sa.create_engine(connection_url, pool_pre_ping=True, connect_args=network_settings(connection_url))
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
        engine = sa.create_engine(connection_url, pool_pre_ping=True, connect_args=network_settings(connection_url))
        sa.event.listen(engine, "connect", _utc_spelt_utc)
        made = PostgresTarget(engine)
        made.fingerprints = PostgresFingerprints()
        made.capabilities = CAPABILITIES
        return made


#: Names of the zone UTC that psycopg does not take for UTC (only 'UTC' itself).
_UTC_ALIASES = {"Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu", "Etc/GMT", "GMT",
                "Etc/Greenwich", "Greenwich", "GMT0", "Etc/GMT0", "GMT+0", "GMT-0", "Etc/GMT+0", "Etc/GMT-0"}


def _utc_spelt_utc(dbapi_connection: Any, record: Any) -> None:
    """A session whose zone is UTC under another name (a server set up with 'Etc/UTC') is set to
    'UTC' itself: the same offsets, so nothing is read or written differently, but psycopg then
    returns timestamps with ``datetime.timezone.utc`` (for another name: a ZoneInfo), which compare
    with the decoded source values without looking up offsets (conflict detection compares every
    row a change touches)."""
    if dbapi_connection.info.parameter_status("TimeZone") in _UTC_ALIASES:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SET TimeZone = 'UTC'")
        dbapi_connection.autocommit = autocommit


adapter = PostgresAdapter()
