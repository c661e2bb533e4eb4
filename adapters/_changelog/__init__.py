"""The one trigger (changelog) capture the SQL adapters share; each adapter's trigger.py holds its hooks."""

from .._sql import kept_note
from .capture import IDLE_CHECK, ChangelogCapture
from .coverage import trigger_fault

__all__ = ["IDLE_CHECK", "ChangelogCapture", "kept_note", "trigger_fault"]
