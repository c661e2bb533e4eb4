"""The core calls on adapters only what adapters/base.py declares, asks capabilities instead of probing,
and the registry refuses two adapters with one name or backend."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdc import registry
from cdc.adapters import base
from cdc.errors import ConfigError

CORE = Path(__file__).resolve().parent.parent / "cdc"
#: The core modules that hold adapter objects (elsewhere ``source``/``target`` are config or columns).
SCANNED = ["pipeline.py", "_opening.py", "_planning.py", "_copying.py", "_streaming.py", "audit.py", "commands", "reconcile", "apply"]
#: Variables named like an adapter object that hold something else: (module, function) -> names.
NOT_ADAPTERS = {("apply/_writes.py", "prepare"): {"source"}}  # the row's values (a dict)
#: Name -> protocol of the object it holds.
NAMES = {"source": base.Source, "target": base.Target, "reads": base.Reads,
         "prints": base.Fingerprints, "fingerprints": base.Fingerprints}
#: Attribute names that hold an adapter object whatever holds them (``side.reads``, ``x.fingerprints``).
ANY_HOLDER = {"reads", "fingerprints"}
#: Objects whose ``source``/``target`` attribute is an adapter object (not a pair's connection config).
HOLDERS = {"self", "runner", "side"}


def declared(protocol: type) -> set[str]:
    """Every member a protocol declares: methods, properties and annotated attributes, inherited too."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls is object or cls.__module__ != base.__name__:
            continue
        names |= {n for n in vars(cls) if not n.startswith("_")} | set(getattr(cls, "__annotations__", {}))
    return names


def _holder_name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def adapter_object(node: ast.expr) -> type | None:
    """The protocol of the adapter object ``node`` holds, or None when it is not one."""
    if isinstance(node, ast.Name) and node.id in NAMES:
        return NAMES[node.id]
    if isinstance(node, ast.Attribute) and node.attr in NAMES:
        if node.attr in ANY_HOLDER or _holder_name(node.value) in HOLDERS:
            return NAMES[node.attr]
    return None


def _modules() -> list[Path]:
    found = []
    for name in SCANNED:
        path = CORE / name
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


def _uses(path: Path):
    """(function, protocol, member or probe, line) for every attribute read on an adapter object."""
    module = path.relative_to(CORE).as_posix()

    def walk(node: ast.AST, function: str):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            skip = NOT_ADAPTERS.get((module, inner), set())
            if isinstance(child, ast.Attribute) and _holder_name(child.value) not in skip:
                protocol = adapter_object(child.value)
                if protocol is not None:
                    yield inner, protocol, child.attr, child.lineno
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.args \
                    and child.func.id in ("getattr", "hasattr") and adapter_object(child.args[0]) is not None:
                yield inner, None, child.func.id, child.lineno
            yield from walk(child, inner)

    yield from walk(ast.parse(path.read_text()), "")


def test_the_scan_sees_the_core_calls():
    """A guard on the guard: the scan finds the calls it is meant to check."""
    seen = {(p.__name__ if p else None, m) for path in _modules() for _, p, m, _ in _uses(path)}
    assert {("Source", "stream"), ("Target", "write_run"), ("Reads", "describe"), ("Fingerprints", "digest")} <= seen


def test_every_member_the_core_calls_is_declared():
    undeclared = [f"{path.relative_to(CORE)}:{line} {function}: {protocol.__name__}.{member}"
                  for path in _modules() for function, protocol, member, line in _uses(path)
                  if protocol is not None and member not in declared(protocol)]
    assert not undeclared, "declare these in adapters/base.py (or stop calling them):\n" + "\n".join(undeclared)


def test_the_core_does_not_probe_adapters():
    probes = [f"{path.relative_to(CORE)}:{line} {function}: {member}(...)"
              for path in _modules() for function, protocol, member, line in _uses(path) if protocol is None]
    assert not probes, "ask a capability (adapters/base.py Capabilities) instead:\n" + "\n".join(probes)


def test_every_adapter_and_its_objects_carry_its_capabilities(tmp_path):
    for backend, adapter in registry.adapters().items():
        assert isinstance(adapter.capabilities, base.Capabilities)
        assert backend in adapter.capabilities.backends
        assert adapter.capabilities.default_driver
        assert set(base.Adapter.__annotations__) | {"source", "target", "database_exists"} <= set(dir(adapter))
    sqlite = registry.adapter_for("sqlite:///x.db")
    target = sqlite.target(f"sqlite:///{tmp_path / 'target.db'}")
    try:
        assert target.capabilities is sqlite.capabilities
    finally:
        target.close()


def test_copy_routes_need_a_target_that_takes_the_format():
    postgres, mysql, sqlite = (registry.adapter_for(u).capabilities
                               for u in ("postgresql://h/d", "mysql://h/d", "sqlite:///x.db"))
    assert postgres.copy_format("logical", postgres) == "binary"
    assert postgres.copy_format("trigger", postgres) is None
    assert mysql.copy_format("binlog", postgres) == "text"
    assert mysql.copy_format("binlog", mysql) is None
    assert sqlite.copy_format("trigger", postgres) is None


def _entry(name: str, backends: tuple[str, ...], value: str | None = None) -> SimpleNamespace:
    """An entry point as importlib.metadata gives it: name, value and load()."""
    adapter = SimpleNamespace(capabilities=base.Capabilities(name=name, backends=backends))
    return SimpleNamespace(name=name, value=value or f"{name}_adapter:adapter", load=lambda: adapter)


def test_registry_indexes_adapters_by_backend():
    found = registry.index([_entry("a", ("a",)), _entry("b", ("b", "b2"))])
    assert sorted(found) == ["a", "b", "b2"] and found["b"] is found["b2"]


def test_two_adapters_with_one_name_are_an_error():
    with pytest.raises(ConfigError, match=r"named 'pg'.*pg = first:adapter.*pg = second:adapter"):
        registry.index([_entry("pg", ("postgresql",), "first:adapter"), _entry("pg", ("postgresql",), "second:adapter")])


def test_two_adapters_for_one_backend_are_an_error():
    with pytest.raises(ConfigError, match=r"serve 'mysql'.*mysql = m:adapter.*maria = x:adapter"):
        registry.index([_entry("mysql", ("mysql",), "m:adapter"), _entry("maria", ("mariadb", "mysql"), "x:adapter")])


#: Where cdc/ may still decide by a database's name, and why.
NAMED_ON_PURPOSE = {
    "state/migrations",  # alembic runs each revision, as written then, on the dialect SQLAlchemy hands it
}


def _database_names() -> set[str]:
    names: set[str] = set()
    for adapter in registry.adapters().values():
        names |= {adapter.capabilities.name, *adapter.capabilities.backends, *adapter.capabilities.schemes}
    return names


def _decided_by(tree: ast.AST, names: set[str]):
    """(line, name) for every database name compared with (``==``, ``in``) or used as a dict key."""
    def named(node: ast.AST | None):
        if isinstance(node, ast.Constant) and node.value in names:
            yield node.lineno, node.value
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            for element in node.elts:
                yield from named(element)

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                yield from named(side)
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                yield from named(key)


def test_the_core_decides_by_no_database_name():
    names = _database_names()
    found = [f"{path.relative_to(CORE)}:{line} {name!r}" for path in sorted(CORE.rglob("*.py"))
             if not any(path.relative_to(CORE).as_posix().startswith(p) for p in NAMED_ON_PURPOSE)
             for line, name in _decided_by(ast.parse(path.read_text()), names)]
    assert not found, "ask a capability (adapters/base.py Capabilities) instead:\n" + "\n".join(found)


@pytest.mark.parametrize("written, loaded", [
    ("postgresql://h/d", "postgresql+psycopg://h/d"), ("postgres://h/d", "postgresql+psycopg://h/d"),
    ("mysql://h/d", "mysql+pymysql://h/d"), ("mariadb://h/d", "mysql+pymysql://h/d"),
    ("postgresql+psycopg2://h/d", "postgresql+psycopg2://h/d"), ("sqlite:///x.db", "sqlite:///x.db"),
])
def test_a_plain_scheme_gets_its_adapters_default_driver(written, loaded):
    from cdc.config import load_url

    assert load_url(written) == loaded


def test_a_scheme_no_adapter_claims_is_left_to_the_registry_to_refuse():
    assert registry.for_scheme("oracle") is None
    with pytest.raises(ConfigError, match="no cdc-sync adapter for 'oracle'"):
        registry.adapter_for("oracle://h/d")


def test_every_adapter_names_its_sql_for_sqlglot_and_identifies_its_urls(tmp_path):
    import sqlglot

    from cdc._identity import database_identity

    for adapter in {id(a): a for a in registry.adapters().values()}.values():
        sqlglot.Dialect.get_or_raise(adapter.capabilities.sqlglot_dialect or None)
    assert database_identity("mysql://u@127.0.0.1/shop") == database_identity("mariadb://v:pw@localhost:3306/shop")
    assert database_identity("postgresql://h:5433/d") != database_identity("postgresql://h:5434/d")
    (tmp_path / "x.db").touch()
    assert database_identity(f"sqlite:///{tmp_path}/x.db") == database_identity(f"sqlite:///{tmp_path}/./x.db")
