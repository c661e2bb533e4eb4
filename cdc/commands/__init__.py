"""The Python API behind every CLI command: one plain function per command."""

from ._check import Report, check, doctor
from ._install import init, install, uninstall
from ._queues import register as register_queues
from ._reports import audit, reconcile
from ._run import daemon, run
from ._status import status

__all__ = ["Report", "audit", "daemon", "check", "doctor", "init", "install", "reconcile", "register_queues",
           "run", "status", "uninstall"]
