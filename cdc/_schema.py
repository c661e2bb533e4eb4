"""Schema checks for config and mapping files: pydantic models whose every object forbids unknown keys.

Policy: a key or value the schema does not know is an error, never ignored (a misspelt key
would otherwise silently change what the pair does). A near miss gets "did you mean". The
error is one line in the house format, ``a.b.c: message (file line N)``; when a file has
several mistakes the first one in the file is reported.
"""

from __future__ import annotations

import difflib
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Iterable, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ._yaml import Document

Model = TypeVar("Model", bound=BaseModel)


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss among ``choices``, else an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def fail(message: str, key: Any = None) -> PydanticCustomError:
    """A validation error with our own message; ``key`` names the key it is about, below the object."""
    context = {"message": message} if key is None else {"message": message, "key": key}
    return PydanticCustomError("cdc", "{message}", context)


class Strict(BaseModel):
    """A YAML object: known keys only; ``prepare`` may turn a shorthand into the full form."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: How the object is written, for the error when it is not a mapping.
    shape: ClassVar[str] = ""

    @classmethod
    def known_keys(cls) -> list[str]:
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def prepare(cls, data: Any) -> Any:
        return data

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, data: Any) -> Any:
        data = cls.prepare(data)
        if not isinstance(data, dict):
            raise fail(cls.shape or f"must be a mapping with {', '.join(cls.known_keys())}")
        known = cls.known_keys()
        for key in data:
            if key not in known:
                hint = did_you_mean(key, known) or f" (expected one of {', '.join(sorted(known))})"
                raise fail(f"unknown key {key!r}{hint}", key)
        return data


def checked(check) -> Any:
    """A validator from a function that returns the value or raises ValueError with the message."""
    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise fail(str(exc)) from None
    return PlainValidator(validate)


def choice(*values: str) -> Any:
    """A text that must be one of ``values``."""
    def check(value: Any) -> str:
        if value not in values:
            raise ValueError(f"{value!r} is not one of {', '.join(values)}{did_you_mean(value, values)}")
        return value
    return Annotated[str, checked(check)]


def _positive(value: Any, whole: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) or value <= 0 \
            or (whole and value != int(value)):
        raise ValueError(f"{value!r} is not a positive {'whole ' if whole else ''}number")
    return int(value) if whole else float(value)


def _zone(value: Any) -> str:
    try:
        ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a time zone name such as Europe/Oslo") from None
    return str(value)


def _names(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError("must be a column name or a list of column names")
    return tuple(names)


PositiveWhole = Annotated[int, checked(lambda v: _positive(v, True))]
PositiveNumber = Annotated[float, checked(lambda v: _positive(v, False))]
TimeZone = Annotated[str, checked(_zone)]
ColumnNames = Annotated[tuple[str, ...], checked(_names)]

#: Messages for pydantic's own error types, in our words.
_MESSAGES = {
    "missing": "required",
    "string_type": "must be text",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "too_short": "must not be empty",
}


def validate(doc: Document, model: type[Model], data: Any, at: tuple = (), *, quote_input: bool = True) -> Model:
    """``data`` checked against ``model``; ConfigError for the first mistake in the file.

    ``at`` is where ``data`` sits in the file. ``quote_input=False`` keeps values out of the
    messages (connection settings may hold a password).
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, at, quote_input) for error in exc.errors()]
        keys, message = min(problems, key=lambda p: doc.line(p[0]))
        raise doc.error(keys, message) from None


def _problem(error: Any, at: tuple, quote_input: bool) -> tuple[tuple, str]:
    context = error.get("ctx") or {}
    keys = at + tuple(part for part in error["loc"] if part != "[key]")
    if "key" in context:
        keys += (context["key"],)
    if error["type"] == "cdc":
        return keys, context["message"]
    kind, value = error["type"], error.get("input")
    message = _MESSAGES.get(kind, error["msg"])
    if kind == "string_type" and isinstance(value, (bool, int, float, Decimal)):
        return keys, f"{message} (write it in quotes)"
    if not quote_input or kind == "missing":
        return keys, message
    if kind == "list_type" and isinstance(value, str):
        return keys, f"{message}: write [{value}]"
    if isinstance(value, (str, int, Decimal)):
        return keys, f"{message}, not {value!r}"
    return keys, message
