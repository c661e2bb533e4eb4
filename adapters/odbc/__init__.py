"""The ODBC adapter (pyodbc): SQL Server, and PostgreSQL, MySQL/MariaDB or SQLite through their ODBC drivers.

A URL says which database it reaches (see _connect.py); the source or target made for it speaks that
database's SQL: for PostgreSQL, MySQL/MariaDB and SQLite their own adapter's classes with pyodbc's
values (source.OdbcReads, target.OdbcWrites), for SQL Server the classes here.
"""

from __future__ import annotations

from typing import Any

from cdc.errors import SourceError

from . import capabilities as _capabilities
from ._connect import engine, reach
from .capabilities import CAPABILITIES
from .fingerprint import fingerprints
from .identity import identity as database_identity
from .source import ChangeTrackingSource, MssqlTimestampSource, OdbcReads, RowversionSource, sqlite_timestamp_source
from .target import dialect_target
from .trigger import MssqlTriggerSource


def _through_odbc(native: type, dialect: str) -> type:
    """A dialect's own source class with pyodbc's values (OdbcReads) in front."""
    return type(f"{dialect.title()}Odbc{native.__name__}", (OdbcReads, native),
                {"dialect": dialect, "__module__": __name__})


def _timestamp_class(dialect: str) -> type:
    """Capture `timestamp` of a dialect, with pyodbc's values."""
    if dialect == "mssql":
        return MssqlTimestampSource
    if dialect == "postgresql":
        from ..postgres.source import TimestampSource
    elif dialect == "mysql":
        from ..mysql.source import TimestampSource
    else:
        return sqlite_timestamp_source()
    return _through_odbc(TimestampSource, dialect)


def _trigger_class(dialect: str) -> type:
    """Capture `trigger` of a dialect: its own adapter's triggers and changelog, read through pyodbc."""
    if dialect == "mssql":
        return MssqlTriggerSource
    if dialect == "mysql":
        from ..mysql.trigger import TriggerSource
    elif dialect == "postgresql":
        from ..postgres.trigger import TriggerSource
    else:
        from ..sqlite.trigger import TriggerSource
    return _through_odbc(TriggerSource, dialect)


class OdbcAdapter:
    """Capabilities and factories of the ODBC adapter (driver: pyodbc, over unixODBC)."""

    capabilities = CAPABILITIES

    def database_exists(self, connection_url: str) -> bool:
        """Always True: connecting through ODBC never creates a database."""
        return True

    def identity(self, connection_url: str) -> tuple:
        return database_identity(connection_url)

    def capabilities_for(self, connection_url: str):
        return _capabilities.for_dialect(reach(connection_url).dialect)

    def source(self, connection_url: str, pair: Any):
        place = reach(connection_url)
        modes = _capabilities.CAPTURE_MODES[place.dialect]
        if pair.capture not in modes:
            raise SourceError(f"pair {pair.name}: capture {pair.capture} is not available for a {place.dialect} "
                              f"database reached through ODBC (available: {', '.join(modes)})")
        made = engine(place)
        if pair.capture == "rowversion":
            source = RowversionSource(made, pair.name, pair.timestamp, pair.source_timezone)
        elif pair.capture == "change_tracking":
            source = ChangeTrackingSource(made, pair.name, pair.source_timezone)
        elif pair.capture == "trigger":
            zone = (pair.source_timezone,) if place.dialect in ("mysql", "mssql") else ()  # the others log instants
            source = _trigger_class(place.dialect)(made, pair.name, *zone)
        else:
            source = _timestamp_class(place.dialect)(made, pair.name, pair.timestamp, pair.source_timezone)
        source.capabilities = _capabilities.for_dialect(place.dialect)
        source.fingerprints = fingerprints(place.dialect, pair.source_timezone)
        return source

    def target(self, connection_url: str):
        place = reach(connection_url)
        made = dialect_target(place.dialect)(engine(place))
        made.capabilities = _capabilities.for_dialect(place.dialect)
        made.fingerprints = fingerprints(place.dialect)
        return made


adapter = OdbcAdapter()
