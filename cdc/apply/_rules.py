"""Accounting rules a change must pass before it is written: closed periods and voucher balance.

Both are pure functions over a part's mapped changes: they read no database and only say which
changes to park and why. The decision step (cdc/apply/_decide.py) calls them, parks what they
return as dead letters (kind 'closed' and 'balance') and writes the rest.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from .._transforms import EXACT
from ..changes import Row
from ..errors import RowError
from ..mapping import MappedChange

#: The row a change finds on the target before it (the target row as it stands, or the change's
#: mapped before image), or None when there is none or it is not known.
BeforeOf = Callable[[MappedChange], "Row | None"]
Rejected = list[tuple[MappedChange, RowError]]

_WRITES = ("upsert", "insert")
_THEN_RETRY = "then `cdc dead-letters retry`"


# -- closed periods ----------------------------------------------------------------------------
def closed(items: list[MappedChange], before_of: BeforeOf) -> Rejected:
    """The changes that touch a closed period, each with the error it is parked with.

    Policy: a table whose spec has ``closed_before`` and a ``period`` column accepts no change
    to a row dated before closed_before: neither a row written with such a date (insert, update
    into the period) nor a change to a row that has one (an update moving a posting out of the
    period, a delete). A datetime counts by its own date, never shifted through another zone. A
    period value that is not a date cannot be judged and is parked too: nothing passes unchecked.
    A change that writes nothing (filtered out) or could not be mapped is left alone."""
    rejected = []
    for item in items:
        spec = item.mapping.spec
        if spec.closed_before is None or spec.period is None or not item.ops or item.error is not None:
            continue
        error = _closed_error(item, before_of, spec.period, spec.closed_before)
        if error is not None:
            rejected.append((item, error))
    return rejected


def _closed_error(item: MappedChange, before_of: BeforeOf, column: str, closed_before: dt.date) -> RowError | None:
    """Why the change touches a period before ``closed_before`` (its after rows first, then the
    row it changes), or None."""
    images = [(op.row, "") for op in item.ops if op.op in _WRITES]
    if item.change.op != "insert" or not images:
        images.append((before_of(item), f" (the row this {item.change.op} changes)"))
    for row, which in images:
        if row is None or row.get(column) is None:
            continue
        day = _day(row[column], item.mapping.source_zone)
        if day is None:
            return _row_error(item, column, "closed",
                              f"period column {column} holds {row[column]!r}{which}, not a date: cannot tell whether "
                              f"it is in a closed period (closed_before {closed_before}); map a date column as "
                              f"period, {_THEN_RETRY}")
        if day < closed_before:
            return _row_error(item, column, "closed",
                              f"posting dated {day}{which} is in a closed period (closed_before {closed_before}): "
                              f"parked for review; fix the source or move closed_before, {_THEN_RETRY}")
    return None


def _day(value: Any, zone: str = "UTC") -> dt.date | None:
    """The date a period value stands for (a datetime: its own date, a time-zoned one in the pair's
    source_timezone, where the books are kept; ISO text as a date), or None."""
    if isinstance(value, dt.datetime):
        return (value.astimezone(ZoneInfo(zone)) if value.tzinfo is not None else value).date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value).date()
        except ValueError:
            return None
    return None


#: The txid of the changes `cdc dead-letters retry` makes of the source's current rows (one unit).
RETRY = "retry"


# -- voucher balance ---------------------------------------------------------------------------
class _Voucher:
    """One voucher's postings in one source transaction: the changes and the sum they move."""

    def __init__(self, name: str, transaction: str):
        self.name, self.transaction = name, transaction
        self.items: dict[int, MappedChange] = {}
        self.delta = Decimal(0)
        self.problem: str | None = None  # why the sum cannot be known


def unbalanced(items: list[MappedChange], before_of: BeforeOf) -> Rejected:
    """The changes of vouchers that do not balance, each with the error it is parked with.

    Policy: for a table whose spec has ``balance``, the postings of one voucher (its group_by
    value) in one source transaction (txid, else the change's position) must leave the target's
    sum of the voucher's amounts (amount, or debit - credit; NULL counts 0) where it was: the
    sum over its changes of the amount after (0 for a delete) minus the amount before (the row
    ``before_of`` gives, 0 without one). A second change to a row in the same call counts from
    the first one's after row. A posting moved to another voucher counts in both. A voucher
    whose sum moves, or whose sum cannot be known (an amount that is not a number), returns ALL
    its changes: it is parked whole, never half-applied. Exact Decimal arithmetic (a float
    amount counts as the number it prints as). Pass only changes that may be written: a posting
    parked for another reason (held, not mappable, in a closed period) is then missing from its
    voucher's sum, so the rest of the voucher it moved is parked too; a change that carries a
    mapping error or writes nothing is left out here."""
    vouchers: dict[tuple, _Voucher] = {}
    rows: dict[tuple, Row | None] = {}  # (target table, key) -> its row after the changes so far
    for item in items:
        if item.mapping.spec.balance is not None and item.error is None and item.ops:
            _count(item, before_of, vouchers, rows)
    parked: dict[int, tuple[MappedChange, RowError]] = {}
    for voucher in vouchers.values():
        if voucher.problem is None and voucher.delta == 0:
            continue
        for item in voucher.items.values():
            parked.setdefault(id(item), (item, _balance_error(item, voucher)))
    return [parked[id(item)] for item in items if id(item) in parked]


def halves(written: list[MappedChange], refused: list) -> Rejected:
    """The postings of ``written`` whose voucher (in their source transaction) lost a posting the
    target refused (``refused``: (change, error) pairs), each with the error it is parked with:
    written without it, the voucher would stand unbalanced in the ledger."""
    lost: dict[tuple, tuple[MappedChange, RowError]] = {}
    for item, error in refused:
        if item.mapping.spec.balance is not None and error.kind != "held":
            for group in _groups(item):
                lost.setdefault(group, (item, error))
    found = []
    for item in written if lost else ():
        if item.mapping.spec.balance is None:
            continue
        hit = next((lost[g] for g in _groups(item) if g in lost), None)
        if hit is not None:
            other, why = hit
            found.append((item, _row_error(item, item.mapping.spec.balance.group_by, "balance",
                                           f"its voucher's posting {list(other.change.key)} was refused by the "
                                           f"target ({why}): the whole voucher is parked, as without it the voucher "
                                           "would not balance; retrying either letter retries the voucher")))
    return found


def _groups(item: MappedChange) -> set[tuple]:
    """The (transaction, table, voucher) groups a posting's rows belong to: after and before (a moved one, both)."""
    spec = item.mapping.spec
    rows = [op.row for op in item.ops if op.op in _WRITES and op.row is not None] + [item.before_image()]
    return {(_transaction(item), item.mapping.target, row.get(spec.balance.group_by)) for row in rows if row}


def _count(item: MappedChange, before_of: BeforeOf, vouchers: dict[tuple, _Voucher], rows: dict) -> None:
    """Add one change's move of its voucher's sum (the before row's amount out, the after row's in)."""
    table, first = item.mapping.target, item.ops[0].key
    before = rows[(table, first)] if (table, first) in rows else before_of(item)
    after_ops = [op for op in item.ops if op.op in _WRITES]
    for op in item.ops:
        rows[(table, op.key)] = op.row if op.op in _WRITES else None
    for row, sign in ((before, -1), (after_ops[-1].row if after_ops else None, 1)):
        if row is None:
            continue
        voucher = _voucher_of(item, row, vouchers)
        voucher.items[id(item)] = item
        try:
            amount = _amount(item.mapping.spec.balance, row)
            voucher.delta = EXACT.add(voucher.delta, amount if sign > 0 else amount.copy_negate())
        except (InvalidOperation, TypeError, ValueError) as exc:
            voucher.problem = voucher.problem or f"posting {list(item.change.key)} has {exc}"


def _voucher_of(item: MappedChange, row: Row, vouchers: dict[tuple, _Voucher]) -> _Voucher:
    name = row.get(item.mapping.spec.balance.group_by)
    group = (_transaction(item), item.mapping.target, name)
    if group not in vouchers:
        change = item.change
        where = ("the source's current rows a retry read" if change.txid == RETRY
                 else f"source transaction {change.txid}" if change.txid is not None
                 else f"the source transaction at position {change.position}")
        vouchers[group] = _Voucher("NULL" if name is None else str(name), where)
    return vouchers[group]


def _transaction(item: MappedChange) -> Any:
    change = item.change
    return ("txid", change.txid) if change.txid is not None else ("position", str(change.position))


def _amount(balance: Any, row: Row) -> Decimal:
    """A posting's signed amount: the amount column, or debit - credit; NULL counts 0."""
    if balance.amount is not None:
        return _number(balance.amount, row.get(balance.amount))
    return EXACT.subtract(_number(balance.debit, row.get(balance.debit)),
                          _number(balance.credit, row.get(balance.credit)))


def _number(column: str, value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return Decimal(value if isinstance(value, int) else str(value).strip())
        except InvalidOperation:
            pass
    raise ValueError(f"{column} {value!r}, not a number")


def _balance_error(item: MappedChange, voucher: _Voucher) -> RowError:
    column = item.mapping.spec.balance.amount or item.mapping.spec.balance.debit
    if voucher.problem is not None:
        why = f"cannot be checked: {voucher.problem}"
    else:
        why = f"does not balance: postings sum to {voucher.delta:f} (expected 0)"
    return _row_error(item, column, "balance", f"voucher {voucher.name} in {voucher.transaction} {why}: the whole "
                                               f"voucher is parked; fix the source, {_THEN_RETRY}")


def _row_error(item: MappedChange, column: str, kind: str, message: str) -> RowError:
    """The error a change is parked with: ``kind`` is the dead letter's (closed, balance)."""
    return RowError(message, table=item.mapping.target, key=item.change.key, column=column, kind=kind)
