"""The MySQL/MariaDB adapter: binlog, trigger and timestamp capture as a source; ON DUPLICATE KEY UPDATE as a target."""

from __future__ import annotations

from typing import Any

from .capabilities import CAPABILITIES
from .identity import identity as database_identity
from .fingerprint import MySQLFingerprints
from .binlog import BinlogSource
from .source import TimestampSource
from .sql import engine
from .target import MySQLTarget
from .trigger import TriggerSource


class MySQLAdapter:
    """Capabilities and factories of the MySQL/MariaDB adapter (driver: PyMySQL)."""

    capabilities = CAPABILITIES

    def database_exists(self, connection_url: str) -> bool:
        """Always True: connecting never creates a MySQL database (a missing one fails to connect)."""
        return True

    def identity(self, connection_url: str) -> tuple:
        """(host, port, database) as PyMySQL connects (see identity.py)."""
        return database_identity(connection_url)

    def capabilities_for(self, connection_url: str):
        return CAPABILITIES

    def source(self, connection_url: str, pair: Any) -> BinlogSource | TriggerSource | TimestampSource:
        made = engine(connection_url, pair.source_timezone)
        if pair.capture == "timestamp":
            source = TimestampSource(made, pair.name, pair.timestamp, pair.source_timezone)
        elif pair.capture == "trigger":
            source = TriggerSource(made, pair.name, pair.source_timezone)
        else:
            source = BinlogSource(made, pair.name, pair.source_timezone)
        source.fingerprints = MySQLFingerprints(pair.source_timezone)
        source.capabilities = CAPABILITIES
        return source

    def target(self, connection_url: str) -> MySQLTarget:
        made = MySQLTarget(engine(connection_url))
        made.fingerprints = MySQLFingerprints()
        made.capabilities = CAPABILITIES
        return made


adapter = MySQLAdapter()
