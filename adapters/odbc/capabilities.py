"""What the ODBC adapter can do (see adapters/base.py Capabilities): the adapter's own record describes
SQL Server, which only it reaches; a PostgreSQL, MySQL/MariaDB or SQLite database reached through ODBC
gets that database's record, less what needs its native driver (COPY, files it creates)."""

from dataclasses import replace

from ..base import Capabilities

CAPABILITIES = Capabilities(
    name="odbc",
    backends=("odbc", "mssql"),
    # SQL Server's modes (another database reached through ODBC: for_dialect).
    capture_modes=("timestamp", "rowversion", "change_tracking", "trigger"),
    default_driver="mssql+pyodbc",
    complete_schemes=("odbc",),
    in_database_fingerprints=False,  # rows are fingerprinted in Python
    upsert_style="merge",
    sqlglot_dialect="tsql",
    server_clock="SYSUTCDATETIME()",
)

#: Capture modes per dialect reached through ODBC.
CAPTURE_MODES = {"mssql": CAPABILITIES.capture_modes, "postgresql": ("timestamp", "trigger"),
                 "mysql": ("timestamp", "trigger"), "sqlite": ("timestamp", "trigger")}


def for_dialect(dialect: str) -> Capabilities:
    """The record a source or target of ``dialect`` reached through ODBC carries."""
    if dialect == "mssql":
        return CAPABILITIES
    if dialect == "postgresql":
        from ..postgres.capabilities import CAPABILITIES as native
    elif dialect == "mysql":
        from ..mysql.capabilities import CAPABILITIES as native
    else:
        from ..sqlite.capabilities import CAPABILITIES as native
    return replace(native, name="odbc", capture_modes=CAPTURE_MODES[dialect],
                   default_driver=CAPABILITIES.default_driver, copy_formats=(), copy_routes=(),
                   creates_database_on_connect=False, takes_sslmode=False,
                   # SQLite's fingerprints are functions registered on pysqlite's connections.
                   in_database_fingerprints=native.in_database_fingerprints and dialect != "sqlite")
