"""The service: every pair of a config run by workers, with health, metrics, alerts and shared leases."""

from ._health import PairHealth
from ._logs import configure_logging
from ._members import list_daemons, owner
from ._notify import Notifier
from ._service import Daemon

__all__ = ["Daemon", "Notifier", "PairHealth", "configure_logging", "list_daemons", "owner"]
