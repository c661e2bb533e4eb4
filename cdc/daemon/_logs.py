"""The daemon's log lines: INFO by default, JSON lines (python-json-logger) when stderr is no terminal,
each with the pair it concerns; alembic's chatter only at -vv."""

from __future__ import annotations

import logging
import sys
import threading

from pythonjsonlogger.json import JsonFormatter

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Threads named so carry the pair they work for (worker, claim heartbeat).
_PAIR_THREADS = ("pair-", "cdc-claim-")


class _PairField(logging.Filter):
    """Adds ``pair`` to a record made in a pair's thread (unless the call gave one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "pair"):
            name = threading.current_thread().name
            record.pair = next((name[len(p):] for p in _PAIR_THREADS if name.startswith(p)), None)
        return True


def configure_logging(verbose: int, fmt: str = "auto") -> None:
    """Log to stderr (the CLI's scrubbed stream) at INFO (-v: DEBUG); ``fmt`` json, text or auto (JSON
    unless stderr is a terminal)."""
    stream = sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not (hasattr(stream, "isatty") and stream.isatty()))
    handler = logging.StreamHandler(stream)
    handler.addFilter(_PairField())
    if use_json:
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(pair)s",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                                           datefmt="%Y-%m-%dT%H:%M:%S%z"))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    if verbose < 2:
        logging.getLogger("alembic").setLevel(logging.WARNING)
