"""The PostgreSQL adapter: batched upserts as a target (capture modes as a source are being built)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cdc.errors import SourceError

from .target import PostgresTarget


class PostgresAdapter:
    """Capabilities and factories of the PostgreSQL adapter (driver: psycopg 3)."""

    name = "postgresql"
    backends = ("postgresql",)
    capture_modes: tuple[str, ...] = ()  # logical, trigger and timestamp capture: issue 3, not landed yet
    supports_in_db_checksum = True
    upsert_style = "on_conflict"

    def source(self, pair: Any):
        raise SourceError(f"pair {pair.name}: PostgreSQL cannot be a source yet (it can be a target)")

    def target(self, url: str) -> PostgresTarget:
        return PostgresTarget(sa.create_engine(url, pool_pre_ping=True))


adapter = PostgresAdapter()
