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


@dataclass
class Document:
    """A parsed YAML file: its data and the line of each key path."""

    path: Path
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def where(self, keys: tuple) -> str:
        """`file line N` for the nearest key path that has a line."""
        keys = tuple(keys)
        while keys and keys not in self.lines:
            keys = keys[:-1]
        line = self.lines.get(keys, 1)
        return f"{self.path.name} line {line}"

    def error(self, keys: tuple, message: str) -> ConfigError:
        """A ConfigError in the house format: `a.b.c: message (file line N)`."""
        dotted = ".".join(str(k) for k in keys)
        prefix = f"{dotted}: " if dotted else ""
        return ConfigError(f"{prefix}{message} ({self.where(keys)})")


def load(path: Path) -> Document:
    """Parse a YAML file; floats become Decimal so amounts stay exact."""
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
        doc.data = _convert(loader, node, (), doc.lines, path) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"malformed YAML: {problem} ({path.name}{line})") from None
    finally:
        loader.dispose()
    return doc


def _convert(loader: yaml.SafeLoader, node: yaml.Node, keys: tuple, lines: dict, path: Path) -> Any:
    lines.setdefault(keys, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in result:
                raise ConfigError(
                    f"{'.'.join(map(str, keys + (key,)))}: duplicate key ({path.name} line {key_node.start_mark.line + 1})"
                )
            lines[keys + (key,)] = key_node.start_mark.line + 1
            result[key] = _convert(loader, value_node, keys + (key,), lines, path)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, keys + (i,), lines, path) for i, item in enumerate(node.value)]
    if node.tag == _FLOAT_TAG and re.fullmatch(r"[-+]?[0-9_.]+([eE][-+]?[0-9]+)?", node.value):
        return Decimal(node.value.replace("_", ""))
    return loader.construct_object(node, deep=True)
