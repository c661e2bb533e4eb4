"""Alembic environment: runs on the connection cdc.state.upgrade hands over."""

from alembic import context

from cdc.state._migrate import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
