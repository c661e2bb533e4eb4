"""Statements under a target's size limit (MySQL/MariaDB's max_allowed_packet): refuse, fit, split."""

# A server drops the connection on a statement larger than its limit, which looks like a passing
# fault and would be retried for ever. So, before anything is sent: a row larger than the limit is
# refused by name (parked, or the pair stops, by its on_error); an audit row or dead letter that
# would be too large keeps its largest values as their length and SHA-256 only (the fact of the
# change is never lost); and a run of rows is split into statements under the limit.

from __future__ import annotations

import base64
import hashlib
from typing import Any, Callable, Iterator

from cdc.changes import dumps, loads
from cdc.errors import RowError

#: Bytes a row's values take in one statement as the driver sends them: exact (True) or a quick upper bound.
Size = Callable[[dict, bool], int]


def over(size: Size, row: dict, limit: int) -> int | None:
    """The row's exact size in a statement when it is over ``limit``, else None (most rows are
    told apart by the quick bound alone)."""
    if size(row, False) <= limit:
        return None
    exact = size(row, True)
    return exact if exact > limit else None


def refuse_oversized(size: Size, params: dict, limit: int, setting: str) -> None:
    """RowError naming the size, the largest column and the limit when ``params`` cannot be sent."""
    total = over(size, params, limit)
    if total is None:
        return
    sizes = {column: size({column: value}, True) - size({}, True) for column, value in params.items()}
    largest = max(sizes, key=sizes.__getitem__)
    raise RowError(f"row of {total:,} bytes exceeds the target's {setting} {limit:,} ({largest} is "
                   f"{sizes[largest]:,} bytes as sent; binary values go as hex, twice their size): raise "
                   f"{setting} on the target server", column=largest)


def in_statements(rows: list[dict], size: Size, limit: int) -> Iterator[list[dict]]:
    """``rows`` in consecutive parts whose sizes add up to at most ``limit`` (a row alone may be
    larger: it was measured on its own before)."""
    part: list[dict] = []
    total = 0
    for row in rows:
        bytes_ = size(row, False)
        if part and total + bytes_ > limit:
            yield part
            part, total = [], 0
        part.append(row)
        total += bytes_
    if part:
        yield part


def fitted_audit_row(row: dict, size: Size, limit: int) -> dict:
    """An audit row that fits: the largest values of its before/after images replaced by
    {"$omitted": {"bytes": N, "sha256": H}} until it does (nothing else of the row changes)."""
    if over(size, row, limit) is None:
        return row
    images = [loads(row["before"]), loads(row["after"])]

    def encoded() -> dict:
        return {**row, "before": None if images[0] is None else dumps(images[0]),
                "after": None if images[1] is None else dumps(images[1])}

    _omit_largest(images, lambda: over(size, encoded(), limit) is not None, [])
    return encoded()


def fitted_dead_letter(row: dict, size: Size, limit: int, setting: str) -> dict:
    """A dead letter that fits: as fitted_audit_row, inside its change's images, with a note in
    its error and the change's ``omitted`` list naming the columns kept as length and SHA-256."""
    if over(size, row, limit) is None:
        return row
    change = loads(row["change"])
    images = [change.get("before"), change.get("after")]

    def encoded(omitted: list[str]) -> dict:
        columns = sorted(set(omitted))
        kept = {**change, "before": images[0], "after": images[1], "omitted": columns}
        note = (f" [the change is larger than the target's {setting} {limit:,}: the values of "
                f"{', '.join(columns)} are kept as their length and SHA-256 only; read them from the source]")
        return {**row, "change": dumps(kept), "error": row["error"] + note}

    omitted: list[str] = []
    _omit_largest(images, lambda: over(size, encoded(omitted), limit) is not None, omitted)
    return encoded(omitted)


def _omit_largest(images: list[dict | None], too_large: Callable[[], bool], omitted: list[str]) -> None:
    """Replace values in ``images`` (in place), largest first, while ``too_large()``; each column
    replaced is added to ``omitted``."""
    candidates = sorted(((len(dumps(value)), i, column) for i, image in enumerate(images) if image
                         for column, value in image.items()), reverse=True)
    for _, i, column in candidates:
        if not too_large():
            break
        images[i][column] = omitted_value(images[i][column])
        omitted.append(column)


def omitted_value(value: Any) -> dict:
    """What an audit image keeps of a value too large for it: its length in bytes and SHA-256
    (of the UTF-8 text, or of the bytes themselves)."""
    if isinstance(value, dict) and set(value) == {"$base64"}:
        raw = base64.b64decode(value["$base64"])
    else:
        raw = value.encode("utf-8") if isinstance(value, str) else dumps(value).encode("utf-8")
    return {"$omitted": {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}}
