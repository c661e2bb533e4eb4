"""Mapping semantics: transforms refuse to lose data; filters and key moves become the right target ops."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from cdc.changes import Change
from cdc.errors import RowError
from cdc.mapping import ColumnSpec, FilterSpec, TableMapping, TableSpec

SOURCE_COLUMNS = ["id", "name", "amount", "status", "posted_at"]


def mapping(columns=None, filters=(), zone="UTC") -> TableMapping:
    spec = TableSpec("invoices", "fakturaer", None, columns, tuple(filters))
    return TableMapping(spec, SOURCE_COLUMNS, ("id",), zone)


LEDGER = (
    ColumnSpec("faktura_id", "id"),
    ColumnSpec("navn", "name", (("trim", None), ("upper", None))),
    ColumnSpec("belop", "amount", (("decimal", 2),)),
    ColumnSpec("status", "status", (("map", {"open": "åpen", "paid": "betalt"}),)),
    ColumnSpec("dato", "posted_at", (("date_from_timestamp", "Europe/Oslo"),)),
    ColumnSpec("kilde", None, (("constant", "ERP"),)),
)
ROW = {"id": 7, "name": "  Blåbærsyltetøy AS ", "amount": Decimal("0.1"), "status": "open",
       "posted_at": dt.datetime(2024, 3, 31, 22, 30, tzinfo=dt.timezone.utc)}


def test_map_row_applies_every_transform_exactly():
    row = mapping(LEDGER).map_row(ROW)
    assert row == {"faktura_id": 7, "navn": "BLÅBÆRSYLTETØY AS", "belop": Decimal("0.10"), "status": "åpen",
                   "dato": dt.date(2024, 4, 1), "kilde": "ERP"}  # 22:30 UTC is 00:30 on 1 April in Oslo
    assert str(row["belop"]) == "0.10"


def test_naive_timestamps_use_the_pairs_source_zone():
    row = mapping(LEDGER, zone="Europe/Oslo").map_row(dict(ROW, posted_at=dt.datetime(2024, 3, 31, 23, 30)))
    assert row["dato"] == dt.date(2024, 3, 31)


@pytest.mark.parametrize("amount", [Decimal("0.105"), Decimal("12.3456")])
def test_decimal_refuses_to_round(amount):
    with pytest.raises(RowError) as err:
        mapping(LEDGER).map_row(dict(ROW, amount=amount), (7,))
    assert err.value.column == "amount" and "refusing to round" in str(err.value)


def test_value_not_in_map_is_a_row_error():
    with pytest.raises(RowError, match="'void' is not in the value map"):
        mapping(LEDGER).map_row(dict(ROW, status="void"))


def test_unknown_source_column_names_mapping_and_column():
    from cdc.errors import ConfigError

    with pytest.raises(ConfigError, match="source table invoices has no column 'belop_nok'"):
        mapping((ColumnSpec("id", "id"), ColumnSpec("belop", "belop_nok")))


def test_key_column_must_be_mapped():
    from cdc.errors import ConfigError

    with pytest.raises(ConfigError, match="key column\\(s\\) id of invoices must be mapped"):
        mapping((ColumnSpec("navn", "name"),))


FILTERED = mapping(None, [FilterSpec("status", "!=", "draft")])


def change(op, before=None, after=None, key=(1,)):
    return Change(op, "invoices", key, before, after)


def test_filtered_rows_never_reach_the_target_and_leaving_the_filter_deletes():
    draft = {"id": 1, "name": "a", "amount": 1, "status": "draft", "posted_at": None}
    sent = dict(draft, status="open")
    assert FILTERED.map_change(change("insert", None, draft)) == []
    assert FILTERED.map_change(change("delete", draft, None)) == []
    entering = FILTERED.map_change(change("update", draft, sent))
    assert [(o.op, o.key) for o in entering] == [("upsert", (1,))]
    leaving = FILTERED.map_change(change("update", sent, draft))
    assert [(o.op, o.key) for o in leaving] == [("delete", (1,))]


def test_a_key_change_deletes_the_old_key_and_upserts_the_new():
    old = {"id": 1, "name": "a", "amount": 1, "status": "open", "posted_at": None}
    ops = FILTERED.map_change(change("update", old, dict(old, id=2), key=(2,)))
    assert [(o.op, o.key) for o in ops] == [("delete", (1,)), ("upsert", (2,))]
