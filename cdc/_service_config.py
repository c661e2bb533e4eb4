"""The config's service settings: `daemon:` (listen address, stop time, shared state) and `alerts:` (webhooks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from . import _secrets, _yaml, registry
from ._connections import _lookup, load_url
from ._schema import PositiveNumber, Strict, checked, validate

#: What an alert may be sent for: a pair fails, works again, parks changes, or lags.
ALERT_EVENTS = ("failed", "recovered", "parked", "lagging")
DEFAULT_LISTEN = "127.0.0.1:9187"
_LISTEN = ("127.0.0.1", 9187)


@dataclass(frozen=True)
class Alert:
    """A webhook: a JSON document POSTed on each of ``events`` (``text``: Slack/Teams-compatible)."""

    url: str  # a secret (webhook URLs carry tokens): printed only as masked()
    events: tuple[str, ...] = ALERT_EVENTS
    lag_seconds: float = 300.0

    def masked(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}/***"


@dataclass(frozen=True)
class DaemonOptions:
    """How `cdc daemon` serves: where /healthz and /metrics listen (None: nowhere), how long a stop
    may take, when a worker counts as hung, the shared state database, and its back-off."""

    listen: tuple[str, int] | None = _LISTEN
    stop_timeout: float = 60.0
    hung_after: float = 600.0
    state: str | None = None
    lease_seconds: float = 30.0
    max_backoff: float = 300.0
    alerts: tuple[Alert, ...] = field(default_factory=tuple)


def _listen(value: Any) -> tuple[str, int] | None:
    if value is None or value is False or value == "off":
        return None
    text = str(value)
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not host:port (such as {DEFAULT_LISTEN}) or off")
    return (host.strip("[]") or "127.0.0.1", int(port))


def state_url(value: Any) -> str:
    """A shared state database URL, as a DBA writes it (ValueError when it is none)."""
    try:
        url = make_url(load_url(str(value)))
        url.get_dialect()
    except (ArgumentError, NoSuchModuleError):
        shown = _secrets.mask_url(str(value))
        raise ValueError(f"{shown!r} is not a database URL (such as postgresql://cdc@state-db/cdc)") from None
    if registry.adapter_for(str(url)).capabilities.database_is_file:
        raise ValueError("the state database shared by daemons must be a database server such as PostgreSQL, not "
                         "a file: daemons on several machines meet there")
    return str(value)


def _webhook(value: Any) -> str:
    parts = urlsplit(str(value))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return str(value)


def _events(value: Any) -> tuple[str, ...]:
    events = [value] if isinstance(value, str) else value
    if not isinstance(events, list) or not events or any(e not in ALERT_EVENTS for e in events):
        raise ValueError(f"must be a list of {', '.join(ALERT_EVENTS)}")
    return tuple(events)


class _Alert(Strict):
    shape: ClassVar[str] = "an alert must be a mapping with url (and events, lag_seconds)"
    url: Annotated[str, checked(_webhook)]
    events: Annotated[tuple[str, ...], checked(_events)] = ALERT_EVENTS
    lag_seconds: PositiveNumber = 300.0


class _Daemon(Strict):
    shape: ClassVar[str] = "daemon must be a mapping (listen, stop_timeout, hung_after, state, lease_seconds)"
    listen: Annotated[Any, checked(_listen)] = _LISTEN
    stop_timeout: PositiveNumber = 60.0
    hung_after: PositiveNumber = 600.0
    state: Annotated[str, checked(state_url)] | None = None
    lease_seconds: PositiveNumber = 30.0
    max_backoff: PositiveNumber = 300.0


def daemon_options(doc: _yaml.Document, raw: Any, alerts: Any) -> DaemonOptions:
    """The `daemon:` and `alerts:` sections, validated; ${ENV} put in; webhook URLs remembered as secrets."""
    if isinstance(raw, dict):
        raw = {k: _secrets.interpolate_url(v, _lookup(doc, ("daemon", k))) if k == "state" and isinstance(v, str)
               else v for k, v in raw.items()}
    options = validate(doc, _Daemon, raw if raw is not None else {}, ("daemon",))
    made = []
    for i, item in enumerate(alerts or []):
        if isinstance(item, dict) and True in item:  # YAML 1.1 reads a bare `on:` as true
            raise doc.error(("alerts", i), "`on:` is read as true by YAML: name the events with `events: [...]`")
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            item = {**item, "url": _secrets.interpolate(item["url"], _lookup(doc, ("alerts", i, "url")))}
        # Not remembered for scrubbing (pieces of it, such as the host, are ordinary words): the URL
        # is only ever printed as Alert.masked().
        alert = validate(doc, _Alert, item, ("alerts", i), quote_input=False)
        made.append(Alert(alert.url, alert.events, alert.lag_seconds))
    if options.state:
        _secrets.remember(_password(options.state))
    return DaemonOptions(**options.model_dump(), alerts=tuple(made))


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except ArgumentError:  # a bad URL is reported when the daemon connects
        return None
