"""The compiled canonical text of a value (row hashes) is exactly the text ``canonical`` gives the fitted value."""

from __future__ import annotations

import datetime as dt
import itertools
import random
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from cdc import values
from cdc.canonical import canonical, texter

COLUMNS = [sa.Column("i", sa.Integer), sa.Column("b", sa.BigInteger, nullable=False),
           sa.Column("u", mysql.INTEGER(unsigned=True)), sa.Column("t", sa.String(5)), sa.Column("x", sa.Text),
           sa.Column("c", sa.CHAR(3)), sa.Column("e", sa.Enum("a", "b", name="e")), sa.Column("n", sa.Numeric(18, 2)),
           sa.Column("n0", sa.Numeric(10, 0)), sa.Column("nb", sa.Numeric(38, 10)), sa.Column("nf", sa.Numeric),
           sa.Column("ts", sa.DateTime(timezone=True)), sa.Column("tn", sa.DateTime, nullable=False),
           sa.Column("f", sa.Float), sa.Column("bo", sa.Boolean), sa.Column("d", sa.Date),
           sa.Column("j", postgresql.JSONB), sa.Column("by", sa.LargeBinary), sa.Column("ti", mysql.TINYINT)]

OSLO = dt.timezone(dt.timedelta(hours=1))
VALUES = [None, 0, 1, -7, True, False, 2**63, -(2**63) - 1, 2**70, "", "abc", "abcdefgh", "ab ", " a", "12.5", "a",
          Decimal("0"), Decimal("-0.00"), Decimal("12.345"), Decimal("12.34"), Decimal("12.3"), Decimal("-0.005"),
          Decimal("1E+3"), Decimal("NaN"), Decimal("Infinity"), Decimal("99999999999999999999.99"),
          Decimal("0.0000000001"), Decimal("123456789012345678901234567890.1234567891"), 1.5, -0.0, float("inf"),
          dt.datetime(2026, 3, 1, 12, 30, 0, 5), dt.datetime(2026, 3, 1, 12, 30, tzinfo=OSLO),
          dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc), dt.date(2026, 2, 28),
          b"\x00\xff", {"a": [1, 2]}, [1, "x"]]


def reference(value, column):
    """The text as TargetRows computed it before it was compiled: fitted where it fits, then canonical."""
    try:
        value = values.fit(value, column)
    except (TypeError, ValueError):
        pass
    return canonical(value, column)


def outcome(function, *args):
    try:
        return "text", function(*args)
    except Exception as exc:  # the same failure counts as the same outcome
        return "raises", type(exc)


@pytest.mark.parametrize("column", COLUMNS, ids=lambda c: c.name)
def test_the_compiled_text_is_the_fitted_values_canonical_text(column):
    text = texter(column, values.fitter(column))
    randoms = random.Random(column.name)
    more = [Decimal(randoms.randint(-10**12, 10**12)).scaleb(-randoms.randint(0, 12)) for _ in range(300)]
    more += [randoms.randint(-10**19, 10**19) for _ in range(100)]
    more += [dt.datetime(2000, 1, 1, tzinfo=dt.timezone(dt.timedelta(minutes=randoms.randint(-900, 900))))
             + dt.timedelta(microseconds=randoms.randint(0, 10**15)) for _ in range(100)]
    compared = 0
    for value in itertools.chain(VALUES, more):
        assert outcome(text, value) == outcome(reference, value, column), (column.type, value)
        compared += 1
    assert compared == len(VALUES) + 500


@pytest.mark.parametrize("kind, keeps", [(postgresql.TIMESTAMP(precision=0), 0), (postgresql.TIME(precision=3), 3),
                                         (mysql.DATETIME(), 0), (mysql.TIME(), 0), (mysql.DATETIME(fsp=6), 6),
                                         (sa.DateTime(), 6), (sa.Time(), 6)])
def test_a_time_column_refuses_what_it_would_round(kind, keeps):
    """PostgreSQL's time(0)/timestamp(0) and MySQL's bare TIME/DATETIME round fractional seconds (time(0)
    made 23:59:59.7 the 24:00:00 it cannot read back): the fit refuses such a value, never rounds."""
    fit = values.fitter(sa.Column("x", kind))
    whole = dt.time(23, 59, 59) if isinstance(kind, sa.Time) else dt.datetime(2026, 1, 1, 23, 59, 59)
    fine = whole.replace(microsecond=700000 if keeps >= 1 else 0)
    rounded = whole.replace(microsecond=123456)
    assert fit(whole) == whole and fit(fine) == fine
    if keeps >= 6:
        assert fit(rounded) == rounded
    else:
        with pytest.raises(ValueError, match=f"more than {keeps} fractional second digits"):
            fit(rounded)


def test_a_time_as_text_is_held_to_its_columns_digits_too():
    """SQLite keeps a TIME as text: '10:00:00.5' into a bare MySQL TIME (or time(0)) would be cut to
    10:00:00 or rounded: refused the same way; text that is no time of day is left to the database."""
    fit = values.fitter(sa.Column("x", mysql.TIME()))
    with pytest.raises(ValueError, match="more than 0 fractional second digits"):
        fit("10:00:00.5")
    assert fit("10:00:00") == "10:00:00" and fit("25:00:00") == "25:00:00"
    assert values.fitter(sa.Column("x", mysql.TIME(fsp=6)))("10:00:00.5") == "10:00:00.5"


def test_a_mysql_time_read_as_a_duration_is_written_as_its_text_in_json():
    """PyMySQL reads TIME as a timedelta: audit images, dead letters and reports encode it as its
    text (reconcile stopped with 'Type is not JSON serializable: datetime.timedelta')."""
    from cdc.changes import dumps

    assert dumps({"starts": dt.timedelta(hours=10, microseconds=500000)}) == '{"starts":"10:00:00.500000"}'
