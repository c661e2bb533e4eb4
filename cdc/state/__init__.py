"""Our own tables in each target: checkpoints, audit log, dead letters, conflicts, leases, reconcile runs."""

from ._tables import audit_log, checkpoints, conflicts, dead_letters, leases, metadata, reconcile_runs, row_hashes
from ._store import Checkpoint, open_counts, other_writers, read_checkpoint, write_audit, write_dead_letters, write_generation, write_reconcile_run
from ._claims import (Claim, ClaimHeldError, ClaimLostError, Holder, forget_checkpoint, read_holder,
                      write_checkpoint)
from ._migrate import ensure_current, upgrade
from . import _claims as claims

__all__ = [
    "Checkpoint", "Claim", "ClaimHeldError", "ClaimLostError", "Holder", "audit_log", "checkpoints", "claims",
    "conflicts", "dead_letters", "ensure_current", "forget_checkpoint", "leases", "metadata", "open_counts", "other_writers", "read_checkpoint",
    "read_holder", "reconcile_runs", "row_hashes", "upgrade", "write_audit", "write_checkpoint", "write_dead_letters",
    "write_generation", "write_reconcile_run",
]
