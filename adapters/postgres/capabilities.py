"""What the PostgreSQL adapter can do (see adapters/base.py Capabilities)."""

from ..base import Capabilities, CopyRoute

CAPABILITIES = Capabilities(
    name="postgresql",
    backends=("postgresql",),
    capture_modes=("logical", "trigger", "timestamp"),
    default_driver="postgresql+psycopg",
    copy_formats=("binary", "text"),
    # A logical source copies binary COPY data to a PostgreSQL target with identical column types.
    copy_routes=(CopyRoute("logical", "postgresql", "binary"),),
    in_database_fingerprints=True,
    upsert_style="on_conflict",
    schemes=("postgres",),  # the scheme libpq also accepts
    takes_sslmode=True,
    sqlglot_dialect="postgres",
    server_clock="clock_timestamp()",  # not now(): the transaction's start, which may be long ago
)
