"""Load YAML and remember the line of every key, so errors can point at it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
#: How many nodes aliases may repeat in one file. A config that shares a few blocks between its
#: pairs repeats hundreds; an "alias bomb" (aliases of aliases of aliases) billions, which would
#: eat the machine's memory before any check ran.
MAX_ALIAS_NODES = 10_000


@dataclass
class Document:
    """A parsed YAML file: its data and the line of each key path."""

    path: Path
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, keys: tuple) -> int:
        """The line of the nearest key path that has one (1 for the file itself)."""
        keys = tuple(keys)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        return self.lines.get(keys, 1)

    def where(self, keys: tuple) -> str:
        """`file line N` for the nearest key path that has a line."""
        return f"{self.path.name} line {self.line(keys)}"

    def error(self, keys: tuple, message: str) -> ConfigError:
        """A ConfigError in the house format: `a.b.c: message (file line N)`."""
        dotted = ".".join(str(k) for k in keys)
        prefix = f"{dotted}: " if dotted else ""
        return ConfigError(f"{prefix}{message} ({self.where(keys)})")


def load(path: Path) -> Document:
    """Parse a YAML file; floats become Decimal so amounts stay exact.

    Merge keys (``<<: *defaults``) work as in YAML 1.1: the mapping's own keys win. A key
    written twice in one mapping is an error, and so is a file whose aliases repeat more than
    MAX_ALIAS_NODES nodes.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        doc = Document(path, None)
        doc.data = _Converter(loader, doc).convert(node, ()) if node is not None else {}
    except RecursionError:
        # PyYAML composes nested collections recursively: a file nested thousands deep cannot be read.
        raise ConfigError(f"{path.name}: nested too deeply to read (thousands of levels of [ or {{)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"malformed YAML: {problem} ({path.name}{line})") from None
    finally:
        loader.dispose()
    return doc


class _Converter:
    """Turns composed YAML nodes into Python values, recording each key's line."""

    def __init__(self, loader: yaml.SafeLoader, doc: Document):
        self.loader, self.doc = loader, doc
        self.seen: set[int] = set()
        self.repeated = 0
        self.open: set[int] = set()  # the collections being converted: the path from the root

    def convert(self, node: yaml.Node, keys: tuple) -> Any:
        if id(node) in self.open:
            raise self.doc.error(keys, f"a YAML alias here refers to the block that contains it (anchored at "
                                       f"line {node.start_mark.line + 1}), so its value would never end")
        self._count(node, keys)
        self.doc.lines.setdefault(keys, node.start_mark.line + 1)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self._collection(node, keys)
        if node.tag == _FLOAT_TAG and re.fullmatch(r"[-+]?[0-9_.]+([eE][-+]?[0-9]+)?", node.value):
            return Decimal(node.value.replace("_", ""))
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError as exc:  # a date YAML recognises by its shape that does not exist: 2026-13-01
            raise self.doc.error(keys, f"{node.value!r} is not a valid value ({exc})") from None

    def _collection(self, node: yaml.MappingNode | yaml.SequenceNode, keys: tuple) -> Any:
        """A mapping or list, marked open while its items are converted: an alias to it from inside
        (``a: &a [*a]``, ``a: &a {<<: *a}``) is refused by convert, as its value would never end."""
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, keys)
            return [self.convert(item, keys + (i,)) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _count(self, node: yaml.Node, keys: tuple) -> None:
        """Refuse an alias bomb before it is expanded: count every node converted a second time."""
        if id(node) not in self.seen:
            self.seen.add(id(node))
            return
        self.repeated += 1
        if self.repeated > MAX_ALIAS_NODES:
            raise self.doc.error(keys, f"aliases repeat more than {MAX_ALIAS_NODES:,} YAML nodes; refusing to "
                                       "expand them (an alias bomb?)")

    def _mapping(self, node: yaml.MappingNode, keys: tuple) -> dict:
        result: dict = {}
        for key_node, value_node in node.value:  # merged keys first, so the mapping's own keys win
            if key_node.tag == _MERGE_TAG:
                result.update(self._merged(value_node, keys))
        own: set = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{'.'.join(map(str, keys)) or 'the file'}: a key must be a name, not a list or "
                                  f"mapping ({self.doc.path.name} line {key_node.start_mark.line + 1})")
            key = self.loader.construct_object(key_node, deep=True)
            if key in own:
                raise ConfigError(f"{'.'.join(map(str, keys + (key,)))}: duplicate key "
                                  f"({self.doc.path.name} line {key_node.start_mark.line + 1})")
            own.add(key)
            self.doc.lines[keys + (key,)] = key_node.start_mark.line + 1
            result[key] = self.convert(value_node, keys + (key,))
        return result

    def _merged(self, node: yaml.Node, keys: tuple) -> dict:
        """The keys a `<<:` brings in: one mapping, or a list of them where the first wins."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict = {}
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise self.doc.error(keys, "'<<' must merge a mapping (<<: *defaults) or a list of them")
            merged.update(self.convert(source, keys))
        return merged
