"""A config file's connections: a URL or fields, ${ENV} put in, our default driver for a plain scheme."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import sqlalchemy as sa
from pydantic import model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from . import _secrets, _yaml, registry
from ._schema import Strict, checked, choice, did_you_mean, fail, validate
from .errors import ConfigError

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

mask_url = _secrets.mask_url


@dataclass(frozen=True)
class Connection:
    """A named database connection; ``url`` may carry a password, so print ``masked``."""

    name: str
    url: str

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def backend(self) -> str:
        return make_url(self.url).get_backend_name()


def load_url(text: str) -> str:
    """A URL as a DBA writes it, with our default driver for a plain scheme."""
    return _with_default_driver(make_url(text)).render_as_string(hide_password=False)


def _with_default_driver(url: sa.URL) -> sa.URL:
    """A URL whose scheme names no driver (``postgresql://``, ``mariadb://``) gets the default driver
    of the adapter the scheme means (``capabilities.default_driver``), as a DBA would expect; one that
    names a driver, or a scheme no adapter claims (refused by the caller), is left as it is."""
    if "+" in url.drivername:
        return url
    adapter = registry.for_scheme(url.drivername)
    if adapter is None or url.drivername in adapter.capabilities.complete_schemes:
        return url
    return url.set(drivername=adapter.capabilities.default_driver)


def _capabilities(driver: str) -> Any:
    """The capabilities of the adapter a connection's ``driver:`` field means, or None (refused later)."""
    adapter = registry.for_scheme(driver.split("+")[0])
    return None if adapter is None else adapter.capabilities


def _port(value: Any) -> int:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError("must be a port number (1-65535)")
    return int(text)


class _Connection(Strict):
    shape: ClassVar[str] = ("must be a database URL such as sqlite:///erp.db, or fields such as {driver: postgresql, "
                            "host: db, user: ledger, password: ${PW}, database: ledger}")
    url: str | None = None
    driver: str | None = None
    host: str | None = None
    port: Annotated[int, checked(_port)] | None = None
    user: str | None = None
    password: str | None = None
    password_file: str | None = None
    database: str | None = None
    sslmode: choice(*SSL_MODES) | None = None
    options: dict[str, str | int | bool] = {}

    @classmethod
    def prepare(cls, data: Any) -> Any:
        return {"url": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _url_or_fields(self) -> "_Connection":
        fields = [k for k in self.model_fields_set if k != "url" and getattr(self, k) not in (None, {})]
        if self.url is not None and fields:
            raise fail("give either a URL or fields (driver, host, ...), not both", sorted(fields)[0])
        if self.url is None and self.driver is None:
            raise fail("needs a URL, or fields with driver: postgresql, mysql, mariadb or sqlite")
        if self.password is not None and self.password_file is not None:
            raise fail("give either password or password_file, not both", "password_file")
        return self


def _lookup(doc: _yaml.Document, keys: tuple):
    """The ${NAME} resolver for one setting: the environment, else the default, else an error."""
    def lookup(name: str, default: str | None) -> str:
        if name in os.environ:
            _secrets.remember_variable(name, os.environ[name])
            return os.environ[name]
        if default is not None:
            return default
        raise doc.error(keys, f"environment variable {name} is not set and has no default (write ${{{name}:-value}})")
    return lookup


def _interpolated(doc: _yaml.Document, keys: tuple, raw: Any) -> Any:
    """A connection with ${ENV} put in: URL-encoded inside a URL's user:password part."""
    if isinstance(raw, str):
        return _secrets.interpolate_url(raw, _lookup(doc, keys))
    if not isinstance(raw, dict):
        return raw
    result = {}
    for key, value in raw.items():
        if isinstance(value, str):
            fill = _secrets.interpolate_url if key == "url" else _secrets.interpolate
            value = fill(value, _lookup(doc, keys + (key,)))
        elif isinstance(value, dict):
            value = _interpolated(doc, keys + (key,), value)
        result[key] = value
    return result


def connection(doc: _yaml.Document, name: str, raw: Any) -> Connection:
    """The connection ``name`` of a config file: interpolated, validated, its URL normalised; its password
    remembered for scrubbing (see cdc._secrets)."""
    keys = ("connections", name)
    fields = validate(doc, _Connection, _interpolated(doc, keys, raw), keys, quote_input=False)
    text = fields.url if fields.url is not None else _url_from_fields(doc, keys, fields)
    url = _normalise_url(doc, keys, text, _written_url(raw))
    _secrets.remember(make_url(url).password)
    return Connection(name, url)


def _url_from_fields(doc: _yaml.Document, keys: tuple, fields: _Connection) -> str:
    capabilities = _capabilities(fields.driver)
    if capabilities is not None and capabilities.database_is_file:
        given = [k for k in ("host", "port", "user", "password", "password_file", "sslmode") if getattr(fields, k)]
        if given:
            raise doc.error(keys + (given[0],), "a SQLite connection takes only database: <file>")
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.options.items()}
    if fields.sslmode is not None:
        if capabilities is None or not capabilities.takes_sslmode:
            raise doc.error(keys + ("sslmode",), "sslmode is PostgreSQL's setting; give this driver's TLS settings "
                                                 "in options: {..}")
        query["sslmode"] = fields.sslmode
    password = fields.password
    if fields.password_file is not None:
        password = _read_password(doc, keys + ("password_file",), fields.password_file)
    url = sa.URL.create(fields.driver, username=fields.user, password=password,
                        host=fields.host, port=fields.port, database=fields.database, query=query)
    return _with_default_driver(url).render_as_string(hide_password=False)


def _read_password(doc: _yaml.Document, keys: tuple, file: str) -> str:
    """The password in ``file`` (relative to the config), without its final line break."""
    path = doc.path.parent / file
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise doc.error(keys, f"cannot read password file {path}: {getattr(exc, 'strerror', None) or 'not UTF-8'}") \
            from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise doc.error(keys, f"password file {path} is empty")
    return password


def _written_url(raw: Any) -> str:
    """The URL as the config file writes it (``${VAR}`` not filled in), for messages."""
    written = raw.get("url") if isinstance(raw, dict) else raw
    return written if isinstance(written, str) else "the URL made of these fields"


def _normalise_url(doc: _yaml.Document, keys: tuple, text: str, written: str) -> str:
    """Our default driver for a plain scheme; relative SQLite paths from the config's folder.

    A URL that cannot be read is named as ``written`` in the file, masked: the values the
    environment put into it may be secrets, wherever the user put them.
    """
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise doc.error(keys, f"{mask_url(written)!r} is not a database URL (in a password written into the URL, "
                              "write @ : / % # ? & as %40 %3A %2F %25 %23 %3F %26, or give it as ${VAR} or as "
                              "password: in connection fields)") from None
    url = _with_default_driver(url)
    try:
        adapter = registry.adapter_for(url.render_as_string(hide_password=False))
    except ConfigError as exc:
        raise doc.error(keys, f"{exc}{did_you_mean(url.get_backend_name(), registry.adapters())}") from None
    if adapter.capabilities.database_is_file and url.database and url.database != ":memory:":
        if not os.path.isabs(url.database):
            # Relative file paths are relative to the config file, not the shell.
            url = url.set(database=str((doc.path.parent / url.database).resolve()))
    return url.render_as_string(hide_password=False)
