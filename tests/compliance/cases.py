"""The cases the suite runs: every source adapter x capture mode, every target adapter.

A new adapter joins the suite by adding its capture modes to ``SOURCES`` and its name to
``TARGETS`` (and its statements to ``databases.DIALECTS``); nothing else in the suite names a
database.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """One source adapter in one capture mode, and what that mode can do by design."""

    kind: str
    capture: str
    transactions: bool = True      # reads whole source transactions (timestamp polling has none)
    hard_deletes: bool = True      # sees DELETE (timestamp polling sees a soft-delete column only)
    every_change: bool = True      # one change per statement (polling sees row versions: two updates
                                   # between polls are one)

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.capture}"

    @property
    def pair_options(self) -> str:
        """The pair's capture lines as a user writes them."""
        lines = f"capture: {self.capture}\n"
        if self.capture == "timestamp":
            lines += "timestamp: {column: updated_at, soft_delete: deleted, overlap_seconds: 30}\n"
        return lines


POLLING = dict(transactions=False, hard_deletes=False, every_change=False)

SOURCES = [
    Source("sqlite", "trigger"),
    Source("sqlite", "timestamp", **POLLING),
    Source("postgresql", "trigger"),
    Source("postgresql", "logical"),
    Source("postgresql", "timestamp", **POLLING),
    Source("mysql", "trigger"),
    Source("mysql", "binlog"),
    Source("mysql", "timestamp", **POLLING),
]
#: The databases reached through the ODBC adapter (unixODBC and the free Debian drivers), each as a
#: source (capture timestamp, the mode every dialect has) and as a target.
ODBC = ["odbc-postgresql", "odbc-mysql", "odbc-sqlite"]
SOURCES += [Source(kind, "timestamp", **POLLING) for kind in ODBC]
SOURCES += [Source(kind, "trigger") for kind in ("odbc-postgresql", "odbc-mysql", "odbc-sqlite")]
TARGETS = ["sqlite", "postgresql", "mysql", *ODBC]

SOURCE_IDS = [s.id for s in SOURCES]

#: The pairings the cheap scenarios run: every native source into every native target; each ODBC
#: source into one native target of another database (what is under test is the ODBC read, and the
#: native targets have every native source); and into each ODBC target two native sources whose
#: values come by different roads (SQLite triggers' JSON text; pgoutput's typed text: timestamptz,
#: bytea, numeric).
NATIVE_TARGETS = [t for t in TARGETS if t not in ODBC]
_ODBC_INTO = {"odbc-postgresql-timestamp": "mysql", "odbc-mysql-timestamp": "sqlite", "odbc-sqlite-timestamp": "postgresql",
              "odbc-postgresql-trigger": "sqlite", "odbc-mysql-trigger": "postgresql", "odbc-sqlite-trigger": "mysql"}
PAIRINGS = ([(s, t) for s in SOURCES if s.kind not in ODBC for t in NATIVE_TARGETS] +
            [(s, _ODBC_INTO[s.id]) for s in SOURCES if s.kind in ODBC] +
            [(s, t) for s in SOURCES if s.id in ("sqlite-trigger", "postgresql-logical")
             for t in ODBC])
PAIRING_IDS = [f"{s.id}-to-{t}" for s, t in PAIRINGS]
