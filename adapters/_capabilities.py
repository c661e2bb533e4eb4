"""What an adapter can do (the record the core asks instead of an adapter's name), and its COPY routes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CopyRoute:
    """Sources of ``capture`` mode write snapshot chunks as COPY data in ``format`` for ``target``
    (an adapter name): the same kind of database (column types compared), or another whose COPY
    text the source makes itself for the target's column types (``Source.copy_compatible``)."""

    capture: str
    target: str
    format: str


@dataclass(frozen=True)
class Capabilities:
    """What an adapter can do: the core asks these, never an adapter's name. ``adapter.capabilities``
    is the record; every Source and Target the adapter makes carries it as ``capabilities``."""

    name: str  #: The adapter's name, as its entry point is named (also the ``target`` of a CopyRoute).
    backends: tuple[str, ...]  #: The SQLAlchemy backend names (``URL.get_backend_name()``) it serves.
    capture_modes: tuple[str, ...] = ()  #: Capture modes as a source, the default first; () if target only.
    default_driver: str = ""  #: The SQLAlchemy ``backend+driver`` a URL without a driver gets.
    schemes: tuple[str, ...] = ()  #: URL schemes besides ``backends`` meaning this database (``postgres://``).
    complete_schemes: tuple[str, ...] = ()  #: Schemes given no default driver (``odbc://``: the URL says all).
    #: Whether a column's declared type limits what it stores (its values fit a type that holds it).
    enforces_types: bool = True
    zero_dates: bool = False  #: Whether date columns may hold zero dates ('0000-00-00'), checked per value.
    copy_formats: tuple[str, ...] = ()  #: The COPY formats the target's ``bulk_load`` takes; () if none.
    copy_routes: tuple[CopyRoute, ...] = ()  #: Which of its sources make COPY data, for which targets, how.
    in_database_fingerprints: bool = False  #: Reconciliation fingerprints rows in the database (else in Python).
    upsert_style: str = "on_conflict"  #: How the target upserts: 'on_conflict', 'on_duplicate_key' or 'merge'.
    #: Whether connecting creates a database that does not exist (a SQLite file): only `cdc init` may.
    creates_database_on_connect: bool = False
    database_is_file: bool = False  #: The URL's database is a file path (relative: to the config's folder).
    takes_sslmode: bool = False  #: A connection given as fields may set libpq's ``sslmode`` (else: options).
    sqlglot_dialect: str = ""  #: sqlglot's name for the SQL, to read a --where ("": sqlglot's default).
    #: SQL for the server's current UTC time, which judges claims ("": no server, this machine's clock).
    server_clock: str = ""

    def copy_format(self, capture: str, target: Capabilities) -> str | None:
        """The COPY format a ``capture`` source writes for ``target``'s bulk_load; None: row by row."""
        return next((route.format for route in self.copy_routes if route.capture == capture
                     and route.target == target.name and route.format in target.copy_formats), None)
