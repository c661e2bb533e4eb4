"""Reconciliation fingerprints computed inside PostgreSQL (see cdc/reconcile.py for the format)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .sql import quote


class PostgresFingerprints:
    """SQL giving each value's canonical text, and the md5-based bucket and digest of a row."""

    def read_only(self, engine: sa.Engine) -> None:
        """Every later transaction on ``engine`` only reads (a write in it is an error)."""
        sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("SET TRANSACTION READ ONLY"))

    def canonical(self, name: str, column: sa.Column, as_type: sa.types.TypeEngine) -> str | None:
        """SQL for the canonical text of ``column`` as a value of ``as_type`` (the target column's
        type), or None when only Python can say it (then the table is compared streamed)."""
        c, kind = quote(name), column.type
        if isinstance(as_type, sa.Boolean):
            if isinstance(kind, sa.Boolean):
                return f"CASE WHEN {c} IS NULL THEN NULL WHEN {c} THEN '1' ELSE '0' END"
            if isinstance(kind, sa.Integer):
                return f"CASE WHEN {c} IS NULL THEN NULL WHEN {c} <> 0 THEN '1' ELSE '0' END"
            return None
        if isinstance(as_type, sa.Integer):
            return f"{c}::text" if isinstance(kind, sa.Integer) and not isinstance(kind, sa.Boolean) else None
        if isinstance(as_type, sa.Numeric) and not isinstance(as_type, sa.Float):
            if as_type.scale is None or isinstance(kind, sa.Float) or not isinstance(kind, (sa.Numeric, sa.Integer)):
                return None
            return f"round({c}::numeric, {int(as_type.scale)})::text"
        if isinstance(as_type, sa.DateTime):
            if not isinstance(kind, sa.DateTime):
                return None
            return f"(extract(epoch FROM {c}) * 1000000)::numeric(30, 0)::text"
        if isinstance(as_type, sa.Date):
            return f"to_char({c}, 'YYYY-MM-DD')" if isinstance(kind, sa.Date) else None
        if isinstance(as_type, sa.LargeBinary):
            return f"encode({c}, 'hex')" if isinstance(kind, sa.LargeBinary) else None
        if isinstance(as_type, sa.Uuid):
            return f"{c}::text" if isinstance(kind, (sa.Uuid, sa.String)) and not isinstance(kind, sa.CHAR) else None
        if isinstance(as_type, sa.CHAR):  # fixed width: compared without the padding
            return f"rtrim({c}::text, ' ')" if isinstance(kind, sa.String) and not isinstance(kind, sa.Enum) else None
        if isinstance(as_type, sa.String) and not isinstance(as_type, sa.Enum):
            if isinstance(kind, sa.CHAR) and kind.length:  # bpchar as the driver gives it: padded
                return f"rpad({c}::text, {int(kind.length)})"
            if isinstance(kind, sa.String) and not isinstance(kind, (sa.CHAR, sa.Enum, postgresql.ENUM)):
                return f"{c}::text"
        return None

    def month(self, name: str, column: sa.Column) -> str | None:
        """SQL for the YYYY-MM of a date/timestamp column (timestamptz in UTC)."""
        kind = column.type
        if isinstance(kind, sa.DateTime) and kind.timezone:
            return f"to_char({quote(name)} AT TIME ZONE 'UTC', 'YYYY-MM')"
        return f"to_char({quote(name)}, 'YYYY-MM')" if isinstance(kind, (sa.Date, sa.DateTime)) else None

    #: Digests it computes: hashtextextended (PostgreSQL's own 64-bit hash, about twice as fast as
    #: MD5 here) when both sides are PostgreSQL, else MD5 as every side can.
    families = ("hashtext", "md5")

    def part(self, text: str, prefixed: bool) -> str:
        return f"coalesce(length({text})::text || ':' || {text}, '\\N')" if prefixed else f"coalesce({text}, '\\N')"

    def join(self, parts: list[str]) -> str:
        return "concat_ws('|', " + ", ".join(parts) + ")" if len(parts) > 1 else parts[0]

    def bucket(self, key_text: str, buckets: int, family: str = "md5") -> str:
        if family == "hashtext":
            return f"mod(mod(hashtextextended({key_text}, 0), {int(buckets)}) + {int(buckets)}, {int(buckets)})"
        return f"mod(('x' || substr(md5({key_text}), 1, 8))::bit(32)::bigint, {int(buckets)})"

    def int_bucket(self, name: str, buckets: int) -> str:
        """The bucket of a row with a single integer key: the key mod ``buckets`` (never negative)."""
        return f"mod(mod({quote(name)}, {int(buckets)}) + {int(buckets)}, {int(buckets)})"

    def digest(self, row_text: str, family: str = "md5") -> str:
        if family == "hashtext":
            return f"hashtextextended({row_text}, 0)"
        return f"(('x' || substr(md5({row_text}), 1, 15))::bit(60)::bigint)"

    def total(self, digest: str) -> str:
        return f"sum({digest})"

    def usable(self, conn: sa.Connection) -> bool:
        """md5 hashes the database's bytes: the same as Python's only in a UTF8 database."""
        return conn.exec_driver_sql("SHOW server_encoding").scalar().upper() in ("UTF8", "UTF-8")
