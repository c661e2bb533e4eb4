"""Find adapters through the `cdc.adapters` entry-point group; the core reaches adapters only here."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from sqlalchemy.engine import make_url

from .errors import ConfigError

GROUP = "cdc.adapters"


@cache
def adapters() -> dict[str, Any]:
    """Every installed adapter, keyed by the SQLAlchemy backend names it serves."""
    found: dict[str, Any] = {}
    for entry in entry_points(group=GROUP):
        adapter = entry.load()
        for backend in adapter.backends:
            found.setdefault(backend, adapter)
    return found


@cache
def _named(backend: str) -> Any:
    """The adapter whose entry point is named after ``backend`` and serves it, loaded alone (each
    adapter loads its drivers: a SQLite pair need not wait for psycopg and PyMySQL); else None."""
    for entry in entry_points(group=GROUP, name=backend):
        adapter = entry.load()
        if backend in adapter.backends:
            return adapter
    return None


def adapter_for(url: str) -> Any:
    """The adapter for a database URL; ConfigError if none is installed for its kind."""
    backend = make_url(url).get_backend_name()
    named = _named(backend)
    if named is not None:
        return named
    known = adapters()
    if backend not in known:
        raise ConfigError(f"no cdc-sync adapter for {backend!r} databases (installed: {', '.join(sorted(known)) or 'none'})")
    return known[backend]
