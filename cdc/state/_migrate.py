"""Create and upgrade the state tables with the alembic migrations shipped in this package."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from ..errors import StateError

VERSION_TABLE = "cdc_alembic_version"  # not "alembic_version": the user's own alembic may own that


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return config


def _versions(conn: sa.Connection) -> tuple[str | None, str]:
    current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    head = ScriptDirectory.from_config(_config()).get_current_head()
    return current, head


def _check_known(current: str | None) -> None:
    if current is None:
        return
    try:
        ScriptDirectory.from_config(_config()).get_revision(current)
    except CommandError:
        raise StateError(
            f"the database holds cdc-sync state schema version {current!r}, which this cdc-sync does not know: "
            "it was written by a newer cdc-sync. Upgrade cdc-sync; nothing was changed."
        ) from None


def upgrade(engine: sa.Engine) -> tuple[str | None, str]:
    """Bring the state tables to the newest version (idempotent); returns (before, after)."""
    with engine.begin() as conn:
        current, head = _versions(conn)
        _check_known(current)
        if current != head:
            config = _config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    return current, head


def ensure_current(conn: sa.Connection) -> None:
    """StateError unless the state tables exist at the version this code knows."""
    current, head = _versions(conn)
    if current is None:
        raise StateError("the target has no cdc-sync state tables: run `cdc init CONFIG` first")
    _check_known(current)
    if current != head:
        raise StateError(f"the state tables are at version {current}, this cdc-sync needs {head}: run `cdc init CONFIG`")
