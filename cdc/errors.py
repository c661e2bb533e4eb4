"""The error hierarchy: the CLI maps each type to an exit code and a message."""


class CdcError(Exception):
    """Base of every error cdc-sync raises on purpose; its text is for the user."""

    exit_code = 1


class ConfigError(CdcError):
    """The user's configuration or mapping is wrong. Stop; exit code 2."""

    exit_code = 2


class SourceError(CdcError):
    """The source database cannot be read as configured. Stop the pair."""


class TargetError(CdcError):
    """The target database cannot be written as configured. Stop the pair."""


class SchemaError(CdcError):
    """A table or column the pair needs is missing or changed. Stop the pair."""


class StateError(CdcError):
    """Our own state tables are missing or newer than this code knows."""


class RetryableError(CdcError):
    """A passing fault (lock, lost connection): retry with back-off."""


class RowError(CdcError):
    """One row cannot be mapped or written; parked or fatal by the pair's on_error.

    Attributes name the table, key and column so the message points at the row.
    """

    def __init__(self, message: str, *, table: str = "", key: tuple = (), column: str | None = None,
                 kind: str = "error", blocked_by: str | None = None):
        super().__init__(message)
        self.table = table
        self.key = key
        self.column = column
        #: What parked it: error (the target or mapping refused it), balance, closed (period) or held
        #: (it waits behind ``blocked_by``, an earlier parked change or open conflict of its key).
        self.kind = kind
        self.blocked_by = blocked_by

    def describe(self) -> str:
        where = f"table {self.table} key {list(self.key)}"
        if self.column:
            where += f" column {self.column}"
        return f"{where}: {self}"


class TransformError(ValueError):
    """A value the transform (or a target's writer) cannot convert; the row is parked or stops the pair."""


def first_line(exc: BaseException) -> str:
    """An error as one line for a log or a status field: a row error names table, key and column."""
    orig = getattr(exc, "orig", None)  # a driver's error wrapped by SQLAlchemy: its own words, not the wrapper's
    text = exc.describe() if isinstance(exc, RowError) else str(orig if isinstance(orig, Exception) else exc)
    return (text.splitlines() or [type(exc).__name__])[0]
