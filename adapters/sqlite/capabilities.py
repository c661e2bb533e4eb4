"""What the SQLite adapter can do (see adapters/base.py Capabilities)."""

from ..base import Capabilities

CAPABILITIES = Capabilities(
    name="sqlite",
    backends=("sqlite",),
    capture_modes=("trigger", "timestamp"),
    default_driver="sqlite",  # pysqlite, in the standard library
    enforces_types=False,  # a column's declared type does not limit what it stores
    in_database_fingerprints=True,  # through functions registered on each connection
    upsert_style="on_conflict",
    creates_database_on_connect=True,  # a missing file is created by the first connection
    database_is_file=True,
    sqlglot_dialect="sqlite",
    # server_clock: none, SQLite has no server (its claims are judged by this machine's clock)
)
