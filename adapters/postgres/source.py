"""PostgreSQL as a source: capture `timestamp` (capture `logical` is logical.py, `trigger` trigger.py)."""

from __future__ import annotations

from .._timestamp import TimestampCapture


class TimestampSource(TimestampCapture):
    """Capture `timestamp` on PostgreSQL: psycopg returns exact Python values (timestamptz aware,
    timestamp without time zone naive, read in source_timezone); bounds are bound as the column's
    own kind, so the server never converts through the session's TimeZone."""
