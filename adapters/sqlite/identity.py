"""Which SQLite database file a URL reaches, however its path is spelt."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy.engine import make_url


def identity(connection_url: str) -> tuple:
    """An existing file is its device and inode (so ``./x.db``, ``//``, ``..``, symlinks and hard links
    are one file); a file not made yet is its real path (symlinked folders resolved), compared without
    case on a case-insensitive file system; every in-memory database is ("memory",)."""
    return file_identity(make_url(connection_url).database)


def file_identity(path: str | None) -> tuple:
    """An existing file's (device, inode); else its real path (case-folded where case does not matter)."""
    if not path or path == ":memory:":
        return ("memory",)
    try:
        found = os.stat(path)
        return "inode", found.st_dev, found.st_ino
    except OSError:
        real = os.path.realpath(path)
        return "path", real.casefold() if case_insensitive(real) else real


def case_insensitive(path: str) -> bool:
    """Whether the file system that holds ``path`` (or its nearest existing folder) ignores case:
    the folder can be reached under its own name with the case of its letters swapped."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    for candidate in (folder, *folder.parents):
        swapped = candidate.with_name(candidate.name.swapcase()) if candidate.name else candidate
        if swapped != candidate:
            return swapped.exists() and os.path.samefile(candidate, swapped)
    return sys.platform in ("darwin", "win32")  # no folder name with letters to try: the platform's default
