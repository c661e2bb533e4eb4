"""Create and upgrade the state tables with the alembic migrations shipped in this package."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..errors import StateError

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "cdc_alembic_version"  # not "alembic_version": the user's own alembic may own that
#: The newest migration's revision. Every command checks the state tables are at it; reading the
#: version row with a plain SELECT spares them loading alembic (a third of the CLI's start-up).
#: tests/test_config.py checks it is alembic's head of migrations/versions.
HEAD = "0004"
_version = sa.Table(VERSION_TABLE, sa.MetaData(), sa.Column("version_num", sa.String(32), primary_key=True))


def _config() -> "Config":
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return config


def head() -> str:
    """The newest migration, as alembic reads migrations/versions."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def _versions(conn: sa.Connection) -> tuple[str | None, str]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    try:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    except KeyError:  # alembic keeps one implementation per dialect name
        raise StateError(f"alembic, which makes cdc-sync's state tables, knows no {conn.dialect.name!r} databases: "
                         "its adapter must register one (a subclass of alembic.ddl.impl.DefaultImpl with "
                         f"__dialect__ = {conn.dialect.name!r})") from None
    current = context.get_current_revision()
    head = ScriptDirectory.from_config(_config()).get_current_head()
    return current, head


def _check_known(current: str | None) -> None:
    if current is None:
        return
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

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
            from alembic import command

            config = _config()
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    return current, head


def ensure_current(conn: sa.Connection) -> None:
    """StateError unless the state tables exist at the version this code knows."""
    if _fast_current(conn) == HEAD:
        return
    current, head = _versions(conn)
    if current is None:
        raise StateError("the target has no cdc-sync state tables: run `cdc init CONFIG` first")
    _check_known(current)
    if current != head:
        raise StateError(f"the state tables are at version {current}, this cdc-sync needs {head}: run `cdc init CONFIG`")


def _fast_current(conn: sa.Connection) -> str | None:
    """The version row, read without alembic; None when there is no version table (alembic then
    says what is wrong)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.select(_version.c.version_num)).scalar()
