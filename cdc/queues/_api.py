"""One plain function per `cdc dead-letters` and `cdc conflicts` command, taking the config's path."""

from __future__ import annotations

from ..config import load_config
from ..errors import ConfigError
from ._conflicts import resolve_conflict
from ._letters import Outcome, discard_letter, retry_letters
from ._rows import (CONFLICT_STATUSES, LETTER_STATUSES, OPEN_LETTERS, Conflict, Letter, collect, find, read_conflicts,
                    read_letters)


def _statuses(status: str, known: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...] | None:
    if status == "all":
        return None
    if status == "open":
        return default
    if status not in known:
        raise ConfigError(f"--status {status!r}: one of open, all, {', '.join(known)}")
    return (status,)


def dead_letters(config_path: str, pair: str | None = None, *, table: str | None = None,
                 status: str = "open") -> list[Letter]:
    """The dead letters of the config's pairs (or one), in id order per target: ``status`` open
    (parked and held: the default), all, or one status; ``table``: a source or target table name."""
    wanted = _statuses(status, LETTER_STATUSES, OPEN_LETTERS)
    return collect(config_path, pair, lambda conn, names: read_letters(conn, names, table=table, statuses=wanted))


def dead_letter(config_path: str, number: int, pair: str | None = None) -> Letter:
    """Dead letter ``number``, whatever its status; ConfigError (exit 2) when no pair has it."""
    return find(config_path, pair, "letter", number)[1]


def retry(config_path: str, number: int | None = None, *, every: bool = False, pair: str | None = None,
          table: str | None = None, wait: bool = False) -> list[Outcome]:
    """Retry dead letter ``number``, or with ``every`` each parked letter of the config's pairs (or
    one, or of one ``table``), from the source's current rows (see cdc.queues._letters). Holds each
    pair's claim while it writes: ClaimHeldError (exit 3) while a `cdc run` holds it, unless ``wait``."""
    if (number is None) == (not every):
        raise ConfigError("name one dead letter to retry (its id), or retry every parked one with --all")
    if number is not None:
        if table is not None:
            raise ConfigError("--table goes with --all")
        chosen, letter = find(config_path, pair, "letter", number)
        return retry_letters(chosen, [letter], wait)
    outcomes: list[Outcome] = []
    for chosen in load_config(config_path).select(pair):
        parked = collect(config_path, chosen.name,
                         lambda conn, names: read_letters(conn, names, table=table, statuses=("parked",)))
        if parked:
            outcomes += retry_letters(chosen, parked, wait)
    return outcomes


def discard(config_path: str, number: int, reason: str, *, pair: str | None = None, wait: bool = False) -> Outcome:
    """Discard dead letter ``number`` with ``reason`` (audited), releasing the changes held behind it."""
    if not reason or not reason.strip():
        raise ConfigError("--reason must say why the change is discarded (it is kept in the audit log)")
    chosen, _ = find(config_path, pair, "letter", number)
    return discard_letter(chosen, number, reason.strip(), wait)


def conflicts(config_path: str, pair: str | None = None, *, table: str | None = None,
              status: str = "open") -> list[Conflict]:
    """The conflicts of the config's pairs (or one): ``status`` open (the default), resolved or all."""
    wanted = _statuses(status, CONFLICT_STATUSES, ("open",))
    return collect(config_path, pair, lambda conn, names: read_conflicts(conn, names, table=table, statuses=wanted))


def conflict(config_path: str, number: int, pair: str | None = None) -> Conflict:
    """Conflict ``number``, whatever its status; ConfigError (exit 2) when no pair has it."""
    return find(config_path, pair, "conflict", number)[1]


def resolve(config_path: str, number: int, take: str, *, pair: str | None = None, wait: bool = False) -> Outcome:
    """Resolve conflict ``number`` taking the ``source``'s change or keeping the ``target``'s row, and
    release the changes held behind it (see cdc.queues._conflicts)."""
    chosen, _ = find(config_path, pair, "conflict", number)
    return resolve_conflict(chosen, number, take, wait)
