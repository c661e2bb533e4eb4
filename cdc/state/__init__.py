"""Our own tables in each target: checkpoints, audit log, dead letters, conflicts, leases, reconcile runs."""

from ._tables import audit_log, checkpoints, conflicts, dead_letters, leases, metadata, reconcile_runs
from ._store import (Checkpoint, forget_checkpoint, read_checkpoint, write_audit, write_checkpoint,
                     write_dead_letters, write_reconcile_run)
from ._migrate import ensure_current, upgrade

__all__ = [
    "Checkpoint", "audit_log", "forget_checkpoint", "checkpoints", "conflicts", "dead_letters", "ensure_current", "leases",
    "metadata", "read_checkpoint", "reconcile_runs", "upgrade", "write_audit", "write_checkpoint", "write_dead_letters",
    "write_reconcile_run",
]
