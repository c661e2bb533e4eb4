"""The one apply path: each part of a read, snapshot chunk or repair in one claim-fenced target transaction."""

from ._transaction import advance, apply, apply_parts, bulk_snapshot, checkpointing, settle_row_hashes

__all__ = ["advance", "apply", "apply_parts", "bulk_snapshot", "checkpointing", "settle_row_hashes"]
