"""The Python API behind every CLI command: one plain function per command."""

from ._check import Report, check, doctor
from ._install import init, install, uninstall
from ._queues import register as register_queues
from ._reports import audit, reconcile
from ._run import GC_THRESHOLD, run
from ._status import status

__all__ = ["GC_THRESHOLD", "Report", "audit", "check", "doctor", "init", "install", "reconcile", "register_queues",
           "run", "status", "uninstall"]
