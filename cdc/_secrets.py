"""Secrets in connection settings: ${ENV} interpolation, URL-encoding, masking and scrubbing.

Policy: a password never appears in any output. URLs are printed masked; a value interpolated
into a URL's user or password part is URL-encoded, so a password holding ``@ : / % # ? &``
can neither break the URL nor be mistaken for its host; and every password the config loaded
(and every value of an environment variable named like a secret, wherever it was put) is
remembered, so the CLI can scrub it from any message it prints as a last line of defence.

Scrubbing must not garble what it leaves: a two-letter password masked everywhere would turn
"changes applied" into "ch***ges applied" and break a report's SHA-256. So a secret (or a piece
of one, cut at a URL delimiter) of at least LONG_SECRET characters is masked wherever it
appears: a run that long of a real password does not turn up in other text by chance. A shorter
one is masked only where a connection error puts a password: as a word inside quotes (``user
"ledger:pw"``, ``host 'pw@db'``, ``database "pw"``). Whatever is known, a URL's password
(``scheme://user:...@``) and a ``password=...`` setting are masked in any text. Reports are never
scrubbed (see cli._emit): they are built from masked URLs and database values, and their bytes
are what their SHA-256 covers.
"""

from __future__ import annotations

import re
import threading
from typing import Callable
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: Environment variables whose values are secrets wherever the config puts them.
SECRET_NAME = re.compile(r"PASS|PWD|(^|_)PW($|_)|SECRET|TOKEN|CRED|AUTH", re.IGNORECASE)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_PLACEHOLDER = "\x00{}\x00"
_PLACEHOLDERS = re.compile("\x00(\\d+)\x00")
_URL_DELIMITERS = re.compile(r"[@:/%#?&=+;,\s\[\]]+")
#: Pieces of a password shorter than this are not scrubbed on their own (a piece of 1-3 characters
#: says little of the password, and masking it even inside quotes would garble messages).
MIN_PIECE = 4
#: Secrets and pieces at least this long are masked anywhere; shorter ones only inside quotes.
LONG_SECRET = 8
MASK = "***"
#: What stands in for a URL part that is a secret until the URL is rendered (letters only: never encoded).
_HIDDEN = "cdcsecretmasked"

_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)[^\s/@]*@")
_PASSWORD_SETTING = re.compile(r"""(\bpass(?:word|wd)?\s*=\s*|\bpwd\s*=\s*|['"]pass(?:word|wd)?['"]\s*:\s*)"""
                               r"""('[^'\n]*'|"[^"\n]*"|\{(?:[^}\n]|\}\})*\}|[^\s,;)}'"]+)""", re.IGNORECASE)

_known: set[str] = set()
_lock = threading.Lock()


def interpolate(text: str, lookup: Callable[[str, str | None], str]) -> str:
    """``text`` with each ${NAME} or ${NAME:-default} replaced by ``lookup(name, default)``."""
    return ENV.sub(lambda m: lookup(m.group(1), m.group(2)), text)


def interpolate_url(text: str, lookup: Callable[[str, str | None], str]) -> str:
    """Like interpolate, but a value that lands in the URL's user or password part is URL-encoded.

    The URL's shape is read from what the user wrote, before any value is put in: so
    ``postgresql://ledger:${PW}@db/x`` stays a URL to host ``db`` whatever ``$PW`` holds, while a
    whole URL from ``${LEDGER_URL}`` is taken as it is (it is already a URL). When the user wrote
    no ``:`` of their own in the user:password part (``postgresql://${CREDS}@db/x``), the first
    ``:`` the values bring separates user from password, as in any URL: ``CREDS=ledger:pw`` is
    user ``ledger`` with password ``pw`` (a user name holding a ``:`` is written
    ``${USER}:${PW}``).
    """
    values = []

    def hold(match: re.Match) -> str:
        values.append(lookup(match.group(1), match.group(2)))
        return _PLACEHOLDER.format(len(values) - 1)

    shape = ENV.sub(hold, text)
    start, end = _userinfo_span(shape)
    separator_written = ":" in _PLACEHOLDERS.sub("", shape[start:end])
    out, position = [], 0
    for match in _PLACEHOLDERS.finditer(shape):
        value = values[int(match.group(1))]
        out.append(shape[position:match.start()])
        if start <= match.start() < end:
            if not separator_written and ":" in value:
                user, password = value.split(":", 1)
                value, separator_written = f"{quote(user, safe='')}:{quote(password, safe='')}", True
            else:
                value = quote(value, safe="")
        out.append(value)
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


def remember_variable(name: str, value: str) -> None:
    """Note the value of environment variable ``name`` if its name says it is a secret (PW, PASSWORD,
    SECRET, TOKEN, CREDS, ...): put in the wrong part of a URL, it would otherwise be printed."""
    if SECRET_NAME.search(name):
        remember(value)


def scrub(text: str) -> str:
    """``text`` without any password the config holds: whole, URL-encoded, or a piece of it (see
    the module's policy for which are masked anywhere and which only inside quotes)."""
    if not text:
        return text
    with _lock:
        secrets = list(_known)
    for form in sorted({f for secret in secrets for f in _forms(secret)}, key=len, reverse=True):
        text = text.replace(form, MASK) if len(form) >= LONG_SECRET else _mask_quoted(text, form)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + "@", text)
    return _PASSWORD_SETTING.sub(lambda m: m.group(1) + MASK, text)


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` can be printed: as it is, URL-encoded, and its pieces between URL delimiters."""
    whole = {secret, quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret)}
    return whole | {piece for piece in _URL_DELIMITERS.split(secret) if len(piece) >= MIN_PIECE}


def _mask_quoted(text: str, form: str) -> str:
    """``text`` with ``form`` masked where it stands as a word inside '...' or "..."."""
    if form not in text:
        return text
    word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])")
    return _QUOTED.sub(lambda m: word.sub(MASK, m.group()), text)


def _masked_setting(key: str, value, secrets: set[str]):
    """A URL query setting with what is secret in it hidden: the whole value of a setting named like a
    password (``?password=``) or holding a known secret, and the password settings inside a value
    that is itself a connection string (``?odbc_connect=DRIVER=..;PWD=..``)."""
    if isinstance(value, tuple):
        return tuple(_masked_setting(key, v, secrets) for v in value)
    if SECRET_NAME.search(key) or value in secrets:
        return _HIDDEN
    return _PASSWORD_SETTING.sub(lambda m: m.group(1) + _HIDDEN, value)


def mask_url(url) -> str:
    """The URL with its password replaced by ***; text that is no URL loses everything between
    ``://`` and the last ``@`` of each word, where a password would be."""
    try:
        parsed = make_url(url)
        with _lock:
            secrets = set(_known)
        # A secret written where another part goes (a ${PW} as the host): that part is masked too,
        # however short the secret (a short one is masked in other text only inside quotes).
        hidden: dict = {part: _HIDDEN for part in ("username", "host", "database")
                        if getattr(parsed, part) is not None and getattr(parsed, part) in secrets}
        query = {key: _masked_setting(key, value, secrets) for key, value in parsed.query.items()}
        if query != dict(parsed.query):
            hidden["query"] = query
        text = (parsed.set(**hidden) if hidden else parsed).render_as_string(hide_password=True)
        return text.replace(_HIDDEN, MASK)  # set whole here: URL-encoded, *** would read %2A%2A%2A
    except (ArgumentError, ValueError, TypeError):
        return re.sub(r"(\w[\w+.\-]*://)\S*@", r"\1" + MASK + "@", str(url))
