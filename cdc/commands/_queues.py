"""The click skin of `cdc dead-letters` and `cdc conflicts` over cdc.queues: arguments in, one line per
record out (or JSON with --json); exit 1 when a retry or resolve left something parked."""

from __future__ import annotations

import sys
from typing import Any, Callable

import click
import orjson

from .. import queues
from ..reports import moment, printable, shown

CONFIG = click.argument("config", type=click.Path(dir_okay=False))
PAIR = click.option("--pair", "pair", metavar="NAME", help="Only this pair (default: every pair in the config).")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
WAIT = click.option("--wait", is_flag=True, help="If a `cdc run` holds the pair, wait until it stops instead of "
                    "exiting with code 3 (nothing is written while the pair streams).")
#: How much of an error the list shows (show gives all of it).
SHORT = 70


def register(main: click.Group, friendly: Callable) -> None:
    """Add the two command groups to ``main``; ``friendly`` turns errors into one line and an exit code."""
    main.add_command(_dead_letters(friendly))
    main.add_command(_conflicts(friendly))


def _dead_letters(friendly: Callable) -> click.Group:
    @click.group("dead-letters")
    def group() -> None:
        """Changes the target refused or that wait behind one: list, show, retry, discard."""

    @group.command("list")
    @CONFIG
    @PAIR
    @click.option("--table", metavar="TABLE", help="Only this table (source or target name).")
    @click.option("--status", default="open", show_default=True, metavar="STATUS",
                  help="open (parked and held), all, or one of parked, held, retried, discarded, resolved.")
    @JSON
    @friendly
    def list_(config: str, pair: str | None, table: str | None, status: str, as_json: bool) -> None:
        """The dead letters: id, pair, table, key, kind, status, what it waits behind, error, when."""
        found = queues.dead_letters(config, pair, table=table, status=status)
        if as_json:
            return _json([letter.as_dict() for letter in found])
        for letter in found:
            behind = f" behind {letter.blocked_by}" if letter.blocked_by and letter.status == "held" else ""
            click.echo(f"{letter.id:>6}  {letter.pair}  {letter.source_table} -> {letter.target_table} "
                       f"{_key(letter.key)}  {letter.op}  {letter.kind}  {letter.status}{behind}  "
                       f"{_short(letter.error)}  {_when(letter.created_at)}")
        click.echo(f"{len(found)} dead letter(s)", err=True)

    @group.command("show")
    @CONFIG
    @click.argument("number", metavar="ID", type=int)
    @PAIR
    @JSON
    @friendly
    def show(config: str, number: int, pair: str | None, as_json: bool) -> None:
        """Everything about one dead letter, the change's images included."""
        letter = queues.dead_letter(config, number, pair)
        if as_json:
            return _json(letter.as_dict(full=True))
        _fields([("dead letter", letter.id), ("pair", letter.pair),
                 ("table", f"{letter.source_table} -> {letter.target_table}"), ("key", _key(letter.key)),
                 ("op", letter.op), ("kind", letter.kind), ("status", letter.status),
                 ("blocked by", letter.blocked_by), ("error", letter.error), ("column", letter.column),
                 ("created", _when(letter.created_at)), ("closed", _when(letter.resolved_at)),
                 ("source txid", letter.source_txid), ("position", letter.source_position), ("note", letter.note)])
        _images(letter.change.get("before"), letter.change.get("after"))

    @group.command("retry")
    @CONFIG
    @click.argument("number", metavar="[ID]", type=int, required=False)
    @click.option("--all", "every", is_flag=True, help="Retry every parked dead letter (of --pair, --table).")
    @PAIR
    @click.option("--table", metavar="TABLE", help="With --all: only this table.")
    @WAIT
    @friendly
    def retry(config: str, number: int | None, every: bool, pair: str | None, table: str | None, wait: bool) -> None:
        """Apply parked changes again from the source's current rows, after the cause was fixed."""
        _outcomes(queues.retry(config, number, every=every, pair=pair, table=table, wait=wait))

    @group.command("discard")
    @CONFIG
    @click.argument("number", metavar="ID", type=int)
    @click.option("--reason", required=True, metavar="TEXT", help="Why (kept in the audit log).")
    @PAIR
    @WAIT
    @friendly
    def discard(config: str, number: int, reason: str, pair: str | None, wait: bool) -> None:
        """Drop a parked change for good (audited), releasing the changes held behind it."""
        _outcomes([queues.discard(config, number, reason, pair=pair, wait=wait)])

    return group


def _conflicts(friendly: Callable) -> click.Group:
    @click.group("conflicts")
    def group() -> None:
        """Changes parked under policy manual (the target row changed meanwhile): list, show, resolve."""

    @group.command("list")
    @CONFIG
    @PAIR
    @click.option("--table", metavar="TABLE", help="Only this table (source or target name).")
    @click.option("--status", default="open", show_default=True, type=click.Choice(["open", "resolved", "all"]))
    @JSON
    @friendly
    def list_(config: str, pair: str | None, table: str | None, status: str, as_json: bool) -> None:
        """The conflicts: id, pair, table, key, status, when."""
        found = queues.conflicts(config, pair, table=table, status=status)
        if as_json:
            return _json([c.as_dict() for c in found])
        for c in found:
            taken = f" (took the {c.resolution})" if c.resolution else ""
            click.echo(f"{c.id:>6}  {c.pair}  {c.source_table or '?'} -> {c.target_table} {_key(c.key)}  "
                       f"{c.change.get('op', '?')}  {c.status}{taken}  {_when(c.created_at)}")
        click.echo(f"{len(found)} conflict(s)", err=True)

    @group.command("show")
    @CONFIG
    @click.argument("number", metavar="ID", type=int)
    @PAIR
    @JSON
    @friendly
    def show(config: str, number: int, pair: str | None, as_json: bool) -> None:
        """One conflict: the source's change and the target row it met."""
        c = queues.conflict(config, number, pair)
        if as_json:
            return _json(c.as_dict(full=True))
        _fields([("conflict", c.id), ("pair", c.pair), ("table", f"{c.source_table} -> {c.target_table}"),
                 ("key", _key(c.key)), ("source key", _key(c.source_key) if c.source_key else None),
                 ("op", c.change.get("op")), ("policy", c.policy), ("status", c.status),
                 ("resolution", c.resolution), ("created", _when(c.created_at)), ("closed", _when(c.resolved_at)),
                 ("position", c.source_position), ("note", c.note)])
        _images(c.change.get("before"), c.change.get("after"))
        click.echo("target row (when the conflict was found):")
        click.echo(f"  {_row(c.target_row)}")

    @group.command("resolve")
    @CONFIG
    @click.argument("number", metavar="ID", type=int)
    @click.option("--take", required=True, type=click.Choice(["source", "target"]),
                  help="source: apply the source's change; target: keep the target row.")
    @PAIR
    @WAIT
    @friendly
    def resolve(config: str, number: int, take: str, pair: str | None, wait: bool) -> None:
        """Decide a conflict, then apply the changes held behind it in order."""
        _outcomes([queues.resolve(config, number, take, pair=pair, wait=wait)])

    return group


def _outcomes(outcomes: list[queues.Outcome]) -> None:
    for outcome in outcomes:
        click.echo(outcome.text)
    if not outcomes:
        click.echo("no parked dead letters")
    if any(o.failed for o in outcomes):
        sys.exit(1)


def _json(data: Any) -> None:
    click.echo(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode())


def _fields(fields: list[tuple[str, Any]]) -> None:
    for name, value in fields:
        if value is not None:
            click.echo(f"{name:<12} {printable(str(value))}")


def _images(before: dict | None, after: dict | None) -> None:
    click.echo("change (source columns the mapping reads):")
    click.echo(f"  before  {_row(before)}")
    click.echo(f"  after   {_row(after)}")


def _row(row: dict | None) -> str:
    if row is None:
        return "-"
    return ", ".join(f"{column}={shown(value)}" for column, value in row.items())


def _key(key: list | None) -> str:
    return "(" + ", ".join(shown(v) for v in key or []) + ")"


def _short(text: str) -> str:
    text = printable(text)
    return text if len(text) <= SHORT else text[:SHORT - 3] + "..."


def _when(value: Any) -> str | None:
    return None if value is None else moment(value)
