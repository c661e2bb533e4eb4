"""The MySQL/MariaDB adapter: binlog, trigger and timestamp capture as a source; ON DUPLICATE KEY UPDATE as a target."""

from __future__ import annotations

from typing import Any

from .fingerprint import MySQLFingerprints
from .binlog import BinlogSource
from .source import TimestampSource
from .sql import engine
from .target import MySQLTarget
from .trigger import TriggerSource


class MySQLAdapter:
    """Capabilities and factories of the MySQL/MariaDB adapter (driver: PyMySQL)."""

    name = "mysql"
    backends = ("mysql", "mariadb")
    capture_modes = ("binlog", "trigger", "timestamp")
    supports_in_db_checksum = True
    upsert_style = "on_duplicate_key"
    creates_database_on_connect = False

    def source(self, pair: Any) -> BinlogSource | TriggerSource | TimestampSource:
        made = engine(pair.source.url, pair.source_timezone)
        if pair.capture == "timestamp":
            source = TimestampSource(made, pair.name, pair.timestamp, pair.source_timezone)
        elif pair.capture == "trigger":
            source = TriggerSource(made, pair.name, pair.source_timezone)
        else:
            source = BinlogSource(made, pair.name, pair.source_timezone)
        source.fingerprints = MySQLFingerprints(pair.source_timezone)
        return source

    def target(self, url: str) -> MySQLTarget:
        made = MySQLTarget(engine(url))
        made.fingerprints = MySQLFingerprints()
        return made


adapter = MySQLAdapter()
