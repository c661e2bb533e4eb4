"""Find adapters through the `cdc.adapters` entry-point group; the core reaches adapters only here.

Policy: two entry points with one name, or two adapters serving one backend, are a ConfigError
naming both, never a silent choice of whichever the environment lists first.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any, Iterable

from sqlalchemy.engine import make_url

from .errors import ConfigError

GROUP = "cdc.adapters"


def index(entries: Iterable[Any]) -> dict[str, Any]:
    """Backend name -> adapter for these entry points (objects with ``name``, ``value`` and
    ``load()``); ConfigError naming both entry points when two share a name or a backend."""
    named: dict[str, Any] = {}
    serving: dict[str, Any] = {}
    found: dict[str, Any] = {}
    for entry in entries:
        if entry.name in named:
            raise ConfigError(f"two cdc-sync adapters are named {entry.name!r}: {_spelt(named[entry.name])} "
                              f"and {_spelt(entry)}; uninstall one of them")
        named[entry.name] = entry
        adapter = entry.load()
        for backend in adapter.capabilities.backends:
            if backend in serving:
                raise ConfigError(f"two cdc-sync adapters serve {backend!r} databases: {_spelt(serving[backend])} "
                                  f"and {_spelt(entry)}; uninstall one of them")
            serving[backend], found[backend] = entry, adapter
    return found


def _spelt(entry: Any) -> str:
    """An entry point as pyproject.toml spells it: ``name = module:object``."""
    return f"{entry.name} = {entry.value}"


@cache
def adapters() -> dict[str, Any]:
    """Every installed adapter, keyed by the SQLAlchemy backend names it serves."""
    return index(entry_points(group=GROUP))


@cache
def _named(backend: str) -> Any:
    """The adapter whose entry point is named after ``backend`` and serves it, loaded alone (each
    adapter loads its drivers: a SQLite pair need not wait for psycopg and PyMySQL); else None."""
    return index(entry_points(group=GROUP, name=backend)).get(backend)


def adapter_for(url: str) -> Any:
    """The adapter for a database URL; ConfigError if none is installed for its kind."""
    return for_backend(make_url(url).get_backend_name())


@cache
def for_backend(backend: str) -> Any:
    """The adapter serving SQLAlchemy backend ``backend`` (e.g. a connection's ``dialect.name``): the
    one whose entry point is named after it, loaded alone, else any installed one that serves it;
    ConfigError if none is installed for its kind."""
    named = _named(backend)
    if named is not None:
        return named
    known = adapters()
    if backend not in known:
        raise ConfigError(f"no cdc-sync adapter for {backend!r} databases (installed: {', '.join(sorted(known)) or 'none'})")
    return known[backend]


@cache
def for_scheme(scheme: str) -> Any | None:
    """The adapter a URL scheme without a driver means (a backend it serves, or one of its
    ``capabilities.schemes`` such as ``postgres``), or None when no installed adapter claims it.
    A scheme that names no entry point (``mariadb``, ``postgres``) loads every adapter to find it."""
    named = _named(scheme)
    if named is not None:
        return named
    return next((a for a in adapters().values() if scheme in a.capabilities.backends + a.capabilities.schemes), None)

