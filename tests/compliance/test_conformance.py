"""Every adapter the entry points find makes objects that implement every member of the protocols in
adapters/base.py: checked by name and callability with ``inspect``, never by running them.

A member the protocol documents as needed "only" where a capability says so (the COPY members)
may be absent from an adapter whose capabilities do not list that; every other member must be there.
"""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace

import pytest

from cdc import registry
from cdc.adapters import base
from cdc.config import TimestampOptions

#: Phrases of base.py that mark a member optional -> whether an adapter object must have it anyway.
OPTIONAL_WHEN = {
    "copy_routes": lambda caps, mode: any(route.capture == mode for route in caps.copy_routes),
    "bulk-loads": lambda caps, mode: bool(caps.copy_formats),
}


def members(protocol: type) -> dict[str, str]:
    """Member -> 'method', 'property' or 'attribute' for every member ``protocol`` declares, inherited too."""
    found: dict[str, str] = {}
    for cls in reversed(protocol.__mro__):
        if cls.__module__ != base.__name__ or cls is object:
            continue
        found |= {name: "attribute" for name in getattr(cls, "__annotations__", {})}
        found |= {name: "property" if isinstance(value, property) else "method"
                  for name, value in vars(cls).items() if not name.startswith("_") and
                  (inspect.isfunction(value) or isinstance(value, property))}
    return found


def optional_marks(protocol: type) -> dict[str, str]:
    """Member -> the text that documents it as optional: its docstring starting "Only", or a class-body
    comment "# Only ..." above it (which covers the members after it up to the next comment)."""
    marks: dict[str, str] = {}
    for cls in protocol.__mro__:
        if cls.__module__ != base.__name__ or cls is object:
            continue
        comment = ""
        for line in inspect.getsource(cls).splitlines():
            if re.match(r"\s{4}#", line):
                comment = line if line.strip().startswith("# Only") else ""
            elif found := re.match(r"\s{4}def (\w+)", line):
                doc = inspect.getdoc(vars(cls)[found[1]]) or ""
                mark = doc if doc.startswith("Only") else comment
                if mark:
                    marks.setdefault(found[1], mark)
    return marks


def required(protocol: type, capabilities: base.Capabilities, mode: str | None) -> dict[str, str]:
    """The members an object with these capabilities (a source: in capture ``mode``) must have."""
    needed = members(protocol)
    for name, mark in optional_marks(protocol).items():
        conditions = [when for phrase, when in OPTIONAL_WHEN.items() if phrase in mark]
        assert conditions, f"{protocol.__name__}.{name} is marked optional by {mark!r}: teach OPTIONAL_WHEN its capability"
        if not any(when(capabilities, mode) for when in conditions):
            needed.pop(name)
    return needed


def missing(obj: object, protocol: type, needed: dict[str, str]) -> list[str]:
    """What ``obj`` (an instance, its class checked statically) lacks of ``needed``, each with why."""
    gaps = []
    for name, kind in sorted(needed.items()):
        try:
            found = inspect.getattr_static(obj, name)
        except AttributeError:
            gaps.append(f"{protocol.__name__}.{name}: absent")
            continue
        if kind == "method":
            function = found.__func__ if isinstance(found, (staticmethod, classmethod)) else found
            if not callable(function):
                gaps.append(f"{protocol.__name__}.{name}: not callable ({type(found).__name__})")
            elif (gap := _unbindable(vars(_declaring(protocol, name))[name], function)):
                gaps.append(f"{protocol.__name__}.{name}: {gap}")
        elif kind == "property" and callable(found) and not isinstance(found, property):
            gaps.append(f"{protocol.__name__}.{name}: a method where the protocol has a property")
    return gaps


def _declaring(protocol: type, name: str) -> type:
    return next(cls for cls in protocol.__mro__ if name in vars(cls))


def _unbindable(declared, implemented) -> str | None:
    """Why a call as the protocol declares it cannot bind to the implementation, or None."""
    params = list(inspect.signature(declared).parameters.values())[1:]
    positional = [object()] * sum(p.default is p.empty and p.kind <= p.POSITIONAL_OR_KEYWORD for p in params)
    keywords = {p.name: object() for p in params if p.default is not p.empty}
    try:
        inspect.signature(implemented).bind(object(), *positional, **keywords)
    except TypeError as error:
        return f"takes no call {inspect.signature(declared)} ({error})"
    return None


def adapters() -> list[tuple[str, object]]:
    """Each adapter the entry points find, once, by its name."""
    return sorted({adapter.capabilities.name: adapter for adapter in registry.adapters().values()}.items())


def objects(adapter, tmp_path) -> list[tuple[str, object, type, str | None]]:
    """(label, object, protocol, capture mode) for every Source (one per capture mode) and the Target."""
    caps = adapter.capabilities
    # A URL as the config hands it over (with the default driver); no server listens on port 9. A
    # database that connecting creates is given a file that exists, as its factories require.
    url = f"{caps.default_driver}://nobody@127.0.0.1:9/none"
    if caps.creates_database_on_connect:
        (tmp_path / "none.db").touch()
        url = f"{caps.default_driver}:///{tmp_path / 'none.db'}"
    made = []
    for mode in caps.capture_modes:
        pair = SimpleNamespace(name="p", capture=mode, source_timezone="UTC", source=SimpleNamespace(name="src"),
                               timestamp=TimestampOptions(column="updated_at") if mode == "timestamp" else None)
        made.append((f"{caps.name} source ({mode})", adapter.source(url, pair), base.Source, mode))
    made.append((f"{caps.name} target", adapter.target(url), base.Target, None))
    return made


def test_the_entry_points_find_every_adapter_of_the_suite():
    from compliance.cases import SOURCES, TARGETS
    names = {name for name, _ in adapters()}
    # A kind "odbc-<dialect>" is a database reached through the adapter named "odbc".
    assert {kind.split("-")[0] for kind in {case.kind for case in SOURCES} | set(TARGETS)} <= names, names


def test_the_optional_members_are_the_copy_members():
    """A guard on the guard: the marks found in base.py are the ones this test was written for."""
    assert set(optional_marks(base.Source)) == {"column_types", "copy_compatible", "copy_out"}
    assert set(optional_marks(base.Target)) == {"bulk_load", "column_types"}
    assert {"stream", "acknowledge", "snapshot", "describe", "capabilities", "backend"} <= set(members(base.Source))


@pytest.mark.parametrize("name, adapter", adapters(), ids=[name for name, _ in adapters()])
def test_every_object_an_adapter_makes_implements_its_protocols(name, adapter, tmp_path):
    caps, gaps = adapter.capabilities, []
    gaps += missing(adapter, base.Adapter, members(base.Adapter))
    for label, made, protocol, mode in objects(adapter, tmp_path):
        try:
            gaps += [f"{label}: {gap}" for gap in missing(made, protocol, required(protocol, caps, mode))]
            assert made.capabilities is caps, f"{label} does not carry its adapter's capabilities"
            # The core finds a connection's capabilities by its SQLAlchemy dialect's name.
            assert made.backend in caps.backends, f"{label}: dialect {made.backend} is not one of {caps.backends}"
            if made.fingerprints is not None:
                gaps += [f"{label} fingerprints: {gap}" for gap in
                         missing(made.fingerprints, base.Fingerprints, members(base.Fingerprints))]
            elif caps.in_database_fingerprints:
                gaps.append(f"{label}: capabilities say in-database fingerprints, but it has none")
        finally:
            made.close()
    assert not gaps, "\n".join(gaps)
