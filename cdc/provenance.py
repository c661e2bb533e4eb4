"""Provenance of a reconcile or audit report: what made it, who, where, from what, as of when.

Every report carries one block: the tool and its version, a run id, the host and the user that ran
it, the source(s) and target(s) with their passwords masked, the as-of position (the pair's
checkpoint), the filters, a SHA-256 of the config and mapping files as they were read, and a SHA-256
of the report's body, so a copy can be checked against the original. ``cdc.reports`` says which
bytes the body hash covers in each format.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import socket
import uuid
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .config import Pair

TOOL = "cdc-sync"


@dataclass(frozen=True)
class Provenance:
    """Who made a report, from what, and when; the body's SHA-256 is added by the report writer."""

    tool: str
    run_id: str
    generated_at: dt.datetime
    host: str
    user: str
    sources: list[str]
    targets: list[str]
    #: Pair -> its checkpoint (the source position the target had applied) when the report began.
    as_of: dict[str, Any]
    filters: dict[str, Any]
    config_sha256: str
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain JSON-able data (the time as ISO text)."""
        data = asdict(self)
        data["generated_at"] = self.generated_at.isoformat()
        return data


def collect(config_path: str | Path, pairs: list[Pair], *, as_of: dict[str, Any], filters: dict[str, Any],
            generated_at: dt.datetime | None = None) -> Provenance:
    """The provenance of a report on ``pairs`` of the config at ``config_path``."""
    files = _files(Path(config_path), pairs)
    return Provenance(
        tool=f"{TOOL} {_version()}", run_id=str(uuid.uuid4()),
        generated_at=generated_at or dt.datetime.now(dt.timezone.utc), host=socket.gethostname(), user=_user(),
        sources=sorted({p.source.masked for p in pairs}), targets=sorted({p.target.masked for p in pairs}),
        as_of=as_of, filters={k: v for k, v in filters.items() if v is not None and v is not False},
        config_sha256=files_sha256(files), files=[str(f) for f in files])


def sha256(text: str) -> str:
    """The SHA-256 of a text's UTF-8 bytes, in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def files_sha256(files: list[Path]) -> str:
    """One SHA-256 over the files' bytes in order, each preceded by its name and length."""
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _files(config_path: Path, pairs: list[Pair]) -> list[Path]:
    """The config file and each mapping file its pairs read (a mapping's origin is its path)."""
    files = [config_path.resolve()]
    for pair in pairs:
        origin = Path(pair.mapping.origin) if pair.mapping.origin else None
        if origin is not None and origin.is_file() and origin.resolve() not in files:
            files.append(origin.resolve())
    return files


def _version() -> str:
    try:
        return version(TOOL)
    except PackageNotFoundError:
        return "unknown"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a container's arbitrary uid)
        return "unknown"
