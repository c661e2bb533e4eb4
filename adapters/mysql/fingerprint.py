"""Reconciliation fingerprints computed inside MySQL/MariaDB (see cdc/reconcile.py for the format)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from .sql import quote
from .types import is_timestamp


class MySQLFingerprints:
    """SQL giving each value's canonical text, and the MD5-based bucket and digest of a row.

    ``source_zone``: DATETIME values are wall-clock time in it; only UTC is computed in the
    database (CONVERT_TZ needs the server's zone tables), another zone is compared streamed.
    """

    def read_only(self, engine: sa.Engine) -> None:
        """Every later transaction on ``engine`` only reads (a write in it is an error)."""
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("START TRANSACTION READ ONLY"))

    def __init__(self, source_zone: str = "UTC"):
        self.source_zone = source_zone

    def canonical(self, name: str, column: sa.Column, as_type: sa.types.TypeEngine) -> str | None:
        c, kind = quote(name), column.type
        if isinstance(as_type, sa.Boolean):
            if isinstance(kind, (sa.Integer, sa.Boolean)):
                return f"CASE WHEN {c} IS NULL THEN NULL WHEN {c} <> 0 THEN '1' ELSE '0' END"
            return None
        if isinstance(as_type, sa.Integer):
            return f"CAST({c} AS CHAR)" if isinstance(kind, sa.Integer) and not isinstance(kind, mysql.BIT) else None
        if isinstance(as_type, sa.Numeric) and not isinstance(as_type, sa.Float):
            if as_type.scale is None or isinstance(kind, sa.Float) or not isinstance(kind, (sa.Numeric, sa.Integer)):
                return None
            return f"CAST(CAST({c} AS DECIMAL(65, {int(as_type.scale)})) AS CHAR)"
        if isinstance(as_type, sa.DateTime):
            if not isinstance(kind, sa.DateTime) or (not is_timestamp(column) and self.source_zone != "UTC"):
                return None
            return f"CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {c}) AS CHAR)"
        if isinstance(as_type, sa.Date):
            return f"CAST({c} AS CHAR)" if isinstance(kind, sa.Date) else None
        if isinstance(as_type, sa.LargeBinary):
            return f"LOWER(HEX({c}))" if isinstance(kind, (sa.LargeBinary, sa.BINARY, sa.VARBINARY)) else None
        if isinstance(as_type, sa.Uuid):
            return f"LOWER(CONVERT({c} USING utf8mb4))" if isinstance(kind, sa.String) else None
        if isinstance(as_type, sa.CHAR):  # fixed width: compared without the padding (MySQL strips it anyway)
            if isinstance(kind, sa.String) and not isinstance(kind, (mysql.SET, mysql.ENUM)):
                return f"TRIM(TRAILING ' ' FROM CONVERT({c} USING utf8mb4))"
            return None
        if isinstance(as_type, sa.String) and not isinstance(as_type, (mysql.SET,)):
            if isinstance(kind, sa.String) and not isinstance(kind, (mysql.SET, sa.JSON)):
                return f"CONVERT({c} USING utf8mb4)"
        return None

    def month(self, name: str, column: sa.Column) -> str | None:
        """SQL for the YYYY-MM of a DATE/DATETIME/TIMESTAMP column (sessions run in UTC)."""
        if not isinstance(column.type, (sa.Date, sa.DateTime)):
            return None
        if isinstance(column.type, sa.DateTime) and not is_timestamp(column) and self.source_zone != "UTC":
            return None
        return f"LEFT(CAST({quote(name)} AS CHAR), 7)"

    families = ("md5",)

    def part(self, text: str, prefixed: bool) -> str:
        if not prefixed:
            return f"COALESCE({text}, '\\\\N')"
        return f"COALESCE(CONCAT(CHAR_LENGTH({text}), ':', {text}), '\\\\N')"

    def join(self, parts: list[str]) -> str:
        return "CONCAT_WS('|', " + ", ".join(parts) + ")" if len(parts) > 1 else parts[0]

    def bucket(self, key_text: str, buckets: int, family: str = "md5") -> str:
        return f"MOD(CAST(CONV(SUBSTRING(MD5({key_text}), 1, 8), 16, 10) AS UNSIGNED), {int(buckets)})"

    def int_bucket(self, name: str, buckets: int) -> str:
        """The bucket of a row with a single integer key: the key mod ``buckets`` (never negative)."""
        return f"MOD(MOD({quote(name)}, {int(buckets)}) + {int(buckets)}, {int(buckets)})"

    def digest(self, row_text: str, family: str = "md5") -> str:
        return f"CAST(CONV(SUBSTRING(MD5({row_text}), 1, 15), 16, 10) AS UNSIGNED)"

    def total(self, digest: str) -> str:
        return f"sum({digest})"

    def usable(self, conn: sa.Connection) -> bool:
        return True  # every session runs with NAMES utf8mb4: MD5 hashes UTF-8 bytes
