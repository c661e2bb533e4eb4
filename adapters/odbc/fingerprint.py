"""Reconciliation fingerprints through ODBC: PostgreSQL's and MySQL's are SQL text any driver sends, so
their own adapters' are used; SQLite's are functions registered on pysqlite connections and SQL Server
has none yet: their rows are fingerprinted in Python (cdc/reconcile)."""

from __future__ import annotations

from typing import Any


def fingerprints(dialect: str, source_zone: str = "UTC") -> Any:
    """The dialect's Fingerprints, or None: rows are read and fingerprinted in Python."""
    if dialect == "postgresql":
        from ..postgres.fingerprint import PostgresFingerprints
        return PostgresFingerprints()
    if dialect == "mysql":
        from ..mysql.fingerprint import MySQLFingerprints
        return MySQLFingerprints(source_zone)
    return None
