"""What the MySQL/MariaDB adapter can do (see adapters/base.py Capabilities)."""

from ..base import Capabilities, CopyRoute

CAPABILITIES = Capabilities(
    name="mysql",
    backends=("mysql", "mariadb"),
    capture_modes=("binlog", "trigger", "timestamp"),
    default_driver="mysql+pymysql",
    zero_dates=True,
    # Every MySQL source makes PostgreSQL COPY text in the server (for the target's column types).
    copy_routes=tuple(CopyRoute(mode, "postgresql", "text") for mode in ("binlog", "trigger", "timestamp")),
    in_database_fingerprints=True,
    upsert_style="on_duplicate_key",
    sqlglot_dialect="mysql",
    server_clock="UTC_TIMESTAMP(6)",
)
