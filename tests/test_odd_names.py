"""Table and column names with %, quotes, backticks and spaces: install, copy, stream and reconcile
handle them as the database does (a % in a quoted name once reached the driver as a parameter marker)."""

from __future__ import annotations

import pytest
from test_mysql_source import mexec
from test_postgres_source import execute, rows


def config(ws, source: str, target: str, capture: str, table: str) -> None:
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  p:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n    tables: ['{table}']\n", encoding="utf-8")


def ok(ws, *args: str) -> str:
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("capture", ["trigger", "logical"])
def test_postgresql_names_with_percent_and_quotes(ws, pg_databases, capture):
    source, target = pg_databases(), pg_databases()
    execute(source, 'CREATE TABLE "rabatt 50%" (id int PRIMARY KEY, "andel %" numeric(5,2), "navn ""x""" text);'
                    "INSERT INTO \"rabatt 50%\" VALUES (1, 12.50, 'a'), (2, 7.25, 'b')")
    config(ws, source, target, capture, "rabatt 50%")
    for command in ("init", "install"):
        ok(ws, command)
    assert "snapshot 2 rows" in ok(ws, "run", "--once")
    execute(source, "UPDATE \"rabatt 50%\" SET \"andel %\" = 99.99 WHERE id = 1; "
                    "INSERT INTO \"rabatt 50%\" VALUES (3, 1.00, 'c')")
    ok(ws, "run", "--once")
    assert rows(source, '"rabatt 50%"', "id") == rows(target, '"rabatt 50%"', "id")
    assert "EQUAL" in ok(ws, "reconcile")


@pytest.mark.parametrize("capture", ["trigger", "binlog"])
def test_mariadb_names_with_percent_backticks_and_quotes(ws, mysql_url, pg_url, capture):
    mexec(mysql_url, "CREATE TABLE `rabatt 50%` (id INT PRIMARY KEY, `andel %` DECIMAL(5,2), `na``me` TEXT, "
                     "`it's` INT)")
    mexec(mysql_url, "INSERT INTO `rabatt 50%` VALUES (1, 12.50, 'a', 1), (2, 7.25, 'b', 2)")
    config(ws, mysql_url, pg_url, capture, "rabatt 50%")
    for command in ("init", "install"):
        ok(ws, command)
    assert "snapshot 2 rows" in ok(ws, "run", "--once")
    mexec(mysql_url, "UPDATE `rabatt 50%` SET `andel %` = 99.99 WHERE id = 1")
    mexec(mysql_url, "INSERT INTO `rabatt 50%` VALUES (3, 1.00, 'c', 3)")
    ok(ws, "run", "--once")
    assert "EQUAL" in ok(ws, "reconcile")
