"""MySQL/MariaDB as a target: batched INSERT ... ON DUPLICATE KEY UPDATE and deletes, one InnoDB transaction."""

from __future__ import annotations

import functools
from typing import Any, Callable

import pymysql.cursors
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql import insert

from cdc import values

from .._sql import SqlTarget
from . import sql, types

#: Error codes of a passing fault: lost or refused connection, server going down, lock wait, deadlock.
RETRY_CODES = {1040, 1053, 1205, 1213, 1927, 2003, 2006, 2013, 2055}
#: Error codes of a statement larger than max_allowed_packet: retrying sends it again, so never retried.
#: (The rows are measured before they are sent; this is the server's word if that ever misses.)
PACKET_CODES = {1153, 1301}
#: Error codes that concern one row's values: too long, out of range, wrong value, NULL, duplicate, FK, CHECK.
ROW_CODES = {1048, 1062, 1264, 1265, 1292, 1364, 1366, 1406, 1451, 1452, 1690, 3819, 4025}


class MySQLTarget(SqlTarget):
    """Binds its own values (see types.writer); sessions are strict (no silent truncation) and in UTC."""

    binds_own_values = True

    def upsert(self, table: sa.TableClause, key: tuple[str, ...], columns: list[str]) -> sa.Executable:
        statement = insert(table)
        updates = {c: statement.inserted[c] for c in columns if c not in key}
        if not updates:  # a row of key columns only: updating the key to itself keeps it as it is
            updates = {key[0]: statement.inserted[key[0]]}
        return statement.on_duplicate_key_update(updates)

    def target_type(self, kind: sa.types.TypeEngine, key: bool = False) -> sa.types.TypeEngine:
        """Text and binary columns of no stated length (SQLite TEXT/BLOB, PostgreSQL text/bytea)
        become LONGTEXT/LONGBLOB, which hold whatever the source can (TEXT and BLOB stop at 64 KiB);
        in the primary key, where MySQL needs a length, VARCHAR(255)/VARBINARY(255)."""
        kind = super().target_type(kind, key)
        if isinstance(kind, sa.DateTime):  # a bare DATETIME keeps no fraction of a second: it would round
            return mysql.DATETIME(fsp=values.second_digits(kind))
        if isinstance(kind, sa.Time):  # so does a bare TIME
            return mysql.TIME(fsp=values.second_digits(kind))
        if isinstance(kind, (sa.String, sa.LargeBinary)) and not isinstance(kind, (sa.Enum, sa.JSON)):
            binary = isinstance(kind, sa.LargeBinary)
            if kind.length is None or kind.length > types.LONGEST_VARCHAR:
                if key:
                    return mysql.VARBINARY(255) if binary else mysql.VARCHAR(255, collation=self.key_collation)
                return mysql.LONGBLOB() if binary else mysql.LONGTEXT()
            if binary:
                return mysql.VARBINARY(kind.length)
            if key:
                return mysql.VARCHAR(kind.length, collation=self.key_collation)
        return kind

    @functools.cached_property
    def key_collation(self) -> str:
        """The collation of text key columns `cdc init` makes: binary and NO PAD, so keys that differ
        only in letter case or trailing spaces stay two rows (the server's default collation would
        make 'a', 'A' and 'a ' one row: the second overwriting the first)."""
        with self.engine.connect() as conn:
            have = {row[0] for row in conn.exec_driver_sql(sql.NO_PAD_BINARY_COLLATIONS)}
        return next((name for name in sql.KEY_COLLATIONS if name in have), "utf8mb4_bin")

    def writer(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.writer(column)

    def reflected(self, table: sa.Table) -> None:
        with self.engine.connect() as conn:
            sql.mark_json_columns(conn, table)
        for column in table.columns:
            if isinstance(column.type, mysql.SET):
                # Its reflected length is one member's: "a,c" would fail the length check. The
                # server checks the members itself (strict mode: an unknown one is an error).
                column.type = sa.Text()

    statement_limit_setting = "max_allowed_packet"
    #: PyMySQL's executemany joins rows into INSERTs of at most this many bytes.
    driver_statement_bytes = pymysql.cursors.Cursor.max_stmt_length

    def statement_limit(self, conn: sa.Connection) -> int | None:
        """The session's max_allowed_packet (read when it connected, see sql.engine)."""
        return conn.connection.info.get(sql.MAX_PACKET)

    def statement_size(self, row: dict, exact: bool = False) -> int:
        return types.statement_size(row, exact)

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        code = sql.error_code(exc)
        if code in PACKET_CODES:
            return "fatal"
        if code in RETRY_CODES or exc.connection_invalidated:
            return "retry"
        if code in ROW_CODES:
            return "row"
        return super().classify(exc)

    def bounded_lock_wait(self, conn: sa.Connection, seconds: float) -> None:
        # Session-wide (MySQL has no per-transaction form); a lock wait is a passing fault here anyway.
        conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {max(1, int(seconds))}")

    def diagnose(self) -> list[tuple[str, str]]:
        """The settings exactly-once depends on (a COMMIT that returned must survive a crash) and
        the largest statement the server takes (a larger row is parked, never applied)."""
        with self.engine.connect() as conn:
            flush, packet = conn.exec_driver_sql(
                "SELECT @@innodb_flush_log_at_trx_commit, @@global.max_allowed_packet").one()
        if int(flush) != 1:
            findings = [("fail", f"target innodb_flush_log_at_trx_commit = {flush}: a crash can lose commits "
                                 "cdc-sync already released at the source; set it to 1")]
        else:
            findings = [("ok", "target innodb_flush_log_at_trx_commit = 1")]
        return findings + [_packet_finding(int(packet))]


#: Below this max_allowed_packet doctor warns: ordinary rows with a large text or binary value do not fit.
ADVISED_PACKET = 64 * 2**20


def _packet_finding(packet: int) -> tuple[str, str]:
    size = f"target max_allowed_packet = {packet:,} bytes ({packet / 2**20:g} MiB)"
    if packet >= ADVISED_PACKET:
        return "ok", size
    return "warn", (f"{size}: a row larger than that (binary values count twice, they are sent as hex) is parked "
                    "with the reason, never applied; raise it to at least 64 MiB: max_allowed_packet = 256M in the "
                    "server's configuration, or SET GLOBAL max_allowed_packet = 268435456")
