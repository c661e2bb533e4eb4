"""Secrets in connection settings: ${ENV} interpolation, URL-encoding, masking and scrubbing.

Policy: a password never appears in any output. URLs are printed masked; a value interpolated
into a URL's user or password part is URL-encoded, so a password holding ``@ : / % # ? &``
can neither break the URL nor be mistaken for its host; and every password the config loaded
is remembered, so the CLI can scrub it from any message it prints as a last line of defence.
"""

from __future__ import annotations

import re
import threading
from typing import Callable
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_PLACEHOLDER = "\x00{}\x00"
_URL_DELIMITERS = re.compile(r"[@:/%#?&=+;,\s\[\]]+")
#: Pieces of a password shorter than this are not scrubbed on their own (it would garble text).
MIN_PIECE = 4
MASK = "***"

_known: set[str] = set()
_lock = threading.Lock()


def interpolate(text: str, lookup: Callable[[str, str | None], str]) -> str:
    """``text`` with each ${NAME} or ${NAME:-default} replaced by ``lookup(name, default)``."""
    return ENV.sub(lambda m: lookup(m.group(1), m.group(2)), text)


def interpolate_url(text: str, lookup: Callable[[str, str | None], str]) -> str:
    """Like interpolate, but a value that lands in the URL's user or password part is URL-encoded.

    The URL's shape is read from what the user wrote, before any value is put in: so
    ``postgresql://ledger:${PW}@db/x`` stays a URL to host ``db`` whatever ``$PW`` holds, while a
    whole URL from ``${LEDGER_URL}`` is taken as it is (it is already a URL).
    """
    values = []

    def hold(match: re.Match) -> str:
        values.append(lookup(match.group(1), match.group(2)))
        return _PLACEHOLDER.format(len(values) - 1)

    shape = ENV.sub(hold, text)
    start, end = _userinfo_span(shape)
    out, position = [], 0
    for match in re.finditer("\x00(\\d+)\x00", shape):
        value = values[int(match.group(1))]
        out.append(shape[position:match.start()])
        out.append(quote(value, safe="") if start <= match.start() < end else value)
        position = match.end()
    out.append(shape[position:])
    return "".join(out)


def _userinfo_span(url: str) -> tuple[int, int]:
    """Where the ``user:password`` part of a URL lies ((0, 0) when it has none)."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return 0, 0
    start = scheme.end()
    authority_end = next((i for i in range(start, len(url)) if url[i] in "/?#"), len(url))
    at = url.rfind("@", start, authority_end)
    return (start, at) if at >= 0 else (0, 0)


def remember(secret: str | None) -> None:
    """Note a password the config holds, so that scrub() removes it from any text."""
    if secret:
        with _lock:
            _known.add(secret)


def scrub(text: str) -> str:
    """``text`` without any password the config holds: whole, URL-encoded, or a piece of it."""
    if not _known or not text:
        return text
    with _lock:
        secrets = sorted(_known, key=len, reverse=True)
    for secret in secrets:
        for form in {secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)}:
            text = text.replace(form, MASK)
        for piece in sorted(_URL_DELIMITERS.split(secret), key=len, reverse=True):
            if len(piece) >= MIN_PIECE:
                text = text.replace(piece, MASK)
    return text


def mask_url(url) -> str:
    """The URL with its password replaced by ***; text that is no URL loses everything between
    ``://`` and the last ``@`` of each word, where a password would be."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        return re.sub(r"(\w[\w+.\-]*://)\S*@", r"\1" + MASK + "@", str(url))
