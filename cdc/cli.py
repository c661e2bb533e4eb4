"""The `cdc` command line: a thin click skin over cdc.commands."""

from __future__ import annotations

import logging
import sys
from functools import wraps
from pathlib import Path

import click
import orjson
import sqlalchemy as sa

from . import commands, reports
from ._secrets import scrub
from .config import mask_url
from .errors import CdcError, RowError

CONFIG = click.argument("config", type=click.Path(dir_okay=False))
PAIR = click.option("--pair", "pair", metavar="NAME", help="Only this pair (default: every pair in the config).")


def _friendly(fn):
    """User mistakes and runtime failures become one line on stderr and an exit code, no traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RowError as exc:
            click.echo(f"error: {exc.describe()}", err=True)
            sys.exit(exc.exit_code)
        except CdcError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except sa.exc.SQLAlchemyError as exc:
            text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            click.echo(f"error: database: {mask_url(text)}", err=True)
            sys.exit(1)

    return wrapper


def _print(report: commands.Report) -> None:
    for line in report.lines:
        click.echo(line)


class _Scrubbed:
    """A text stream that takes every password the config holds out of what is written to it.

    The CLI's stdout and stderr are wrapped in one, so that no output (messages, log lines at
    -vv, tracebacks) can carry a password, whatever code wrote it: the last line of defence
    behind masked URLs. It has no ``buffer``, so nothing (click included) writes around it.
    """

    def __init__(self, stream):
        self._stream = stream
        self.encoding = getattr(stream, "encoding", "utf-8")
        self.errors = getattr(stream, "errors", "strict")

    @property
    def unscrubbed(self):
        """The stream underneath, for output that must reach it unchanged (reports: see _emit)."""
        return self._stream

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError("a text stream")
        self._stream.write(scrub(text))
        return len(text)

    def __getattr__(self, name: str):
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="cdc-sync")
def main(verbose: int) -> None:
    """cdc-sync: keep accounting ledgers in step with the systems that feed them."""
    level = logging.WARNING - 10 * min(verbose, 2)
    if sys.stdout is not None and not isinstance(sys.stdout, _Scrubbed):
        sys.stdout = _Scrubbed(sys.stdout)
    if sys.stderr is not None and not isinstance(sys.stderr, _Scrubbed):
        sys.stderr = _Scrubbed(sys.stderr)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:  # alembic's INFO lines (every migration context) only at -vv
        logging.getLogger("alembic").setLevel(logging.WARNING)


@main.command()
@CONFIG
@PAIR
@_friendly
def check(config: str, pair: str | None) -> None:
    """Validate CONFIG and connect to every database; change nothing."""
    report = commands.check(config, pair)
    _print(report)
    if report.failures:  # every pair was checked; the first failure's exit code
        for exc in report.failures:
            click.echo(f"error: {exc.describe() if isinstance(exc, RowError) else exc}", err=True)
        sys.exit(report.failures[0].exit_code)
    click.echo("config OK")


@main.command()
@CONFIG
@PAIR
@_friendly
def doctor(config: str, pair: str | None) -> None:
    """Check each source's settings for its capture mode and print what to change."""
    report, healthy = commands.doctor(config, pair)
    _print(report)
    if not healthy:
        sys.exit(1)


@main.command()
@CONFIG
@PAIR
@_friendly
def init(config: str, pair: str | None) -> None:
    """Create/upgrade our state tables in each target and create missing target tables."""
    _print(commands.init(config, pair))


@main.command()
@CONFIG
@PAIR
@_friendly
def install(config: str, pair: str | None) -> None:
    """Install change capture (changelog table and triggers) in each source."""
    _print(commands.install(config, pair))


@main.command()
@CONFIG
@PAIR
@_friendly
def uninstall(config: str, pair: str | None) -> None:
    """Remove the change capture that `install` created, and nothing else."""
    _print(commands.uninstall(config, pair))


@main.command()
@CONFIG
@PAIR
@click.option("--once", is_flag=True, help="Snapshot if needed, apply every pending change, then exit.")
@click.option("--resnapshot", is_flag=True, help="Forget the checkpoint and copy every table again first "
              "(after a dropped slot or a purged log).")
@click.option("--wait", is_flag=True, help="If another process runs a pair, wait until it stops instead of "
              "exiting with code 3.")
@_friendly
def run(config: str, pair: str | None, once: bool, resnapshot: bool, wait: bool) -> None:
    """Sync the pairs: initial snapshot, then stream changes (until SIGTERM unless --once)."""
    results = commands.run(config, pair, once=once, progress=sys.stderr.isatty(), resnapshot=resnapshot, wait=wait)
    for r in results:
        more = "".join(text for count, text in (
            (r.parked, f", {r.parked} parked in dead letters"),
            (r.skipped, f", {r.skipped} skipped (no mapped column changed)"),
            (r.conflicts, f", {r.conflicts} conflicts (see `cdc audit`)")) if count)
        snap = f"snapshot {r.snapshot_rows} rows, " if r.tables_snapshotted else ""
        click.echo(f"pair {r.pair}: {snap}{r.applied} changes applied in {r.batches} target transactions{more}")


def _state_option(ctx, param, value: str | None):
    from ._service_config import state_url

    try:
        return None if value is None else state_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _listen_option(ctx, param, value: str | None):
    if value is None or value == "off":
        return value
    from ._service_config import _listen

    try:
        return _listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@CONFIG
@PAIR
@click.option("--state", metavar="URL", callback=_state_option, help="A state database (PostgreSQL) shared by several daemons, which then "
              "take the pairs by lease; overrides the config's daemon.state.")
@click.option("--listen", metavar="HOST:PORT|off", callback=_listen_option,
              help="Where /healthz and /metrics listen (default: the config's daemon.listen, 127.0.0.1:9187).")
@click.option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto", show_default=True,
              help="Log lines as JSON (auto: when stderr is not a terminal) or text.")
@_friendly
def daemon(config: str, pair: str | None, state: str | None, listen, log_format: str) -> None:
    """Run every pair as a service: a worker per pair, restarted with back-off when it fails; SIGTERM
    stops after the current batches, SIGHUP reloads CONFIG; systemd notify, /healthz, /metrics, alerts."""
    from .daemon import configure_logging

    configure_logging(click.get_current_context().find_root().params.get("verbose", 0), log_format)
    sys.exit(commands.daemon(config, pair, state=state, listen=listen))


@main.command()
@CONFIG
@PAIR
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
@_friendly
def status(config: str, pair: str | None, as_json: bool) -> None:
    """Per pair: running or failed, phase, checkpoint, pending, lag, and per table whether it streams or
    is being copied, and rows capture cannot vouch for; exit 1 if a pair failed, parked changes or may
    be missing changes."""
    rows = commands.status(config, pair)
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        for row in rows:
            _print_status(row)
    if not all(row["healthy"] for row in rows):
        sys.exit(1)


def _print_status(row: dict) -> None:
    pending = "unknown" if row["pending"] is None else row["pending"]
    lag = "unknown" if row["lag_seconds"] is None else f"{row['lag_seconds']:.1f} s"
    run_state = {"failed": f"failed: {row['error']}",
                 "unknown": f"state unknown: {row['error']} (a running pair retries while its target is away: see "
                            "its log, or the daemon's /healthz)"}.get(row["state"], row["state"])
    click.echo(f"pair {row['pair']} ({row['capture']}): {row['phase']}, {run_state}")
    if row["holder"]:
        click.echo(f"  process     {row['holder']}")
    if "daemon" in row:
        click.echo(f"  daemon      {row['daemon'] or 'none of the daemons sharing the state database runs it'}")
    if row["error"] and row["state"] not in ("failed", "unknown"):
        click.echo(f"  problem     {row['error']}")
    click.echo(f"  source      {row['source']}")
    click.echo(f"  target      {row['target']}")
    click.echo(f"  checkpoint  {row['checkpoint_text'] or '-'}")
    click.echo(f"  pending     {pending}")
    click.echo(f"  lag         {lag}")
    known = (lambda n: "unknown" if n is None else n)  # None: the target could not be read
    click.echo(f"  applied     {known(row['changes_applied'])} changes since the copy; "
               f"last checkpoint {row['last_applied_at'] or '-'}")
    letters, conflicts = known(row["dead_letters"]), known(row["conflicts"])
    hint = (lambda n, text: text if n not in (0, "unknown") else "")
    click.echo(f"  dead letters {letters}{hint(letters, ' parked or held (`cdc dead-letters list CONFIG`)')}")
    click.echo(f"  conflicts   {conflicts}{hint(conflicts, ' open (`cdc conflicts list CONFIG`)')}")
    for table, phase in row["tables"].items():
        click.echo(f"  table {table}: {_table_phase_text(phase)}")
    for warning in row["warnings"]:
        click.echo(f"  {'problem' if warning['level'] == 'fail' else 'warning':<11} {warning['text']}")


def _table_phase_text(phase: dict) -> str:
    """``streaming``, ``snapshotting (1,200 rows copied so far)``, ... for one table of `cdc status`."""
    rows = phase.get("rows_copied")
    if phase["phase"] == "snapshotting" and rows is not None:
        return f"snapshotting ({rows:,} rows copied so far)"
    if phase["phase"] == "copied":
        return "copied" + (f" ({rows:,} rows)" if rows is not None else "") + ", streams once every table is copied"
    if phase["phase"] == "not copied yet":
        because = f"{phase['reason']}; " if phase.get("reason") else ""
        return f"not copied yet ({because}the next `cdc run` copies it)"
    return phase["phase"]


@main.command()
@CONFIG
@click.option("--pair", "pair", metavar="NAME", help="The pair to compare (needed when the config has several).")
@click.option("--table", metavar="TABLE", help="Only this table (source or target name).")
@click.option("--where", metavar="SQL", help="Only rows meeting this SQL condition, on both sides; it may name only "
              "columns the mapping copies unchanged under the same name (others are refused).")
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), default="text", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the report here instead of stdout.")
@click.option("--locale", type=click.Choice(["en", "nb"]), default="en", show_default=True,
              help="nb: Norwegian headings and amounts as 1 234 567,89.")
@click.option("--limit", type=click.IntRange(0), default=100, show_default=True,
              help="List at most this many differing rows per table (the counts stay exact).")
@click.option("--settle", type=click.FloatRange(0), default=3.0, show_default=True,
              help="Seconds to re-read differing rows: a difference that disappears was a change in flight.")
@click.option("--repair", is_flag=True, help="Make the target equal: upsert missing/differing rows, delete extra "
              "ones, through the audited apply path (reason 'repair').")
@click.option("--dry-run", is_flag=True, help="With --repair: print the plan, change nothing.")
@click.option("--wait", is_flag=True, help="With --repair: if a `cdc run` holds the pair, wait until it stops "
              "instead of exiting with code 3 (a repair never writes while the pair streams).")
@_friendly
def reconcile(config: str, pair: str | None, table: str | None, where: str | None, fmt: str, output: str | None,
              locale: str, limit: int, settle: float, repair: bool, dry_run: bool, wait: bool) -> None:
    """Compare source (as mapped) with target; exit 0 when equal, 1 when differences were found, 3 when
    --repair finds the pair running in another process."""
    if dry_run and not repair:
        raise click.UsageError("--dry-run goes with --repair")
    if wait and not repair:
        raise click.UsageError("--wait goes with --repair")
    progress = (lambda text: click.echo(text, err=True)) if sys.stderr.isatty() else None
    report = commands.reconcile(config, pair, table=table, where=where, limit=limit, settle=settle, repair=repair,
                                dry_run=dry_run, wait=wait, progress=progress)
    _emit(reports.reconcile_report(report, fmt, locale), output)
    if not report.equal:
        sys.exit(1)


@main.command()
@CONFIG
@PAIR
@click.option("--table", metavar="TABLE", help="Only this table (source or target name).")
@click.option("--key", metavar="VALUES", help="Only this row (key values, comma-separated; a value with a comma "
                                               "in double quotes): its whole history.")
@click.option("--since", metavar="WHEN", help="From this date or date-time (ISO, UTC unless an offset is given).")
@click.option("--until", metavar="WHEN", help="Before this date or date-time.")
@click.option("--op", type=click.Choice(["insert", "update", "delete", "snapshot"]), help="Only this operation.")
@click.option("--format", "fmt", type=click.Choice(reports.FORMATS), default="text", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), help="Write the report here instead of stdout.")
@click.option("--locale", type=click.Choice(["en", "nb"]), default="en", show_default=True)
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True,
              help="List at most this many entries (the newest; with --key the oldest); the summary counts all.")
@_friendly
def audit(config: str, pair: str | None, table: str | None, key: str | None, since: str | None, until: str | None,
          op: str | None, fmt: str, output: str | None, locale: str, limit: int) -> None:
    """The trail of what was applied, parked, retried, discarded and repaired, summary first."""
    found = commands.audit(config, pair, table=table, key=key, since=since, until=until, op=op, limit=limit)
    _emit(reports.audit_report(found, fmt, locale), output)


def _emit(text: str, output: str | None) -> None:
    """A report, byte for byte, to ``output`` or to stdout.

    Never through the scrubbing stream: a report's body is covered by its own SHA-256, and the
    scrubber masking a value that happens to equal a password would make the copy on stdout
    differ from the file and fail its check. A report holds no secret the scrubber could find:
    its URLs are masked when it is built, and the rest is the databases' own data.
    """
    if output:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"report written to {output}", err=True)
    else:
        stdout = sys.stdout.unscrubbed if isinstance(sys.stdout, _Scrubbed) else sys.stdout
        click.echo(text, nl=False, file=stdout)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("cdc-demo"),
              show_default=True, help="Where to create the demo databases and config.")
@click.option("--target", metavar="URL", help="Ledger database URL (e.g. postgresql://user:pw@host/db) instead "
              "of a SQLite file; it must be empty of demo tables.")
@_friendly
def demo(directory: Path, target: str | None) -> None:
    """Create a Norwegian ERP and a ledger in SQLite, sync them, change the ERP, sync again."""
    from . import demo as demo_module

    if not demo_module.run_demo(directory, echo=click.echo, target=target):
        sys.exit(1)


commands.register_queues(main, _friendly)  # `cdc dead-letters ...` and `cdc conflicts ...` (cdc/commands/_queues.py)
