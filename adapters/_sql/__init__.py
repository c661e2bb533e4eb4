"""The shared SQLAlchemy implementation of the SQL adapters (private to adapters/)."""

from .reads import KeyedReads, same
from .source import SqlSource, kept_note
from .target import SqlTarget

__all__ = ["KeyedReads", "SqlSource", "SqlTarget", "kept_note", "same"]
