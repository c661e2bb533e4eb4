"""Alembic migrations of the state tables."""
