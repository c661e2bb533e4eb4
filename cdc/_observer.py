"""What a running pair tells whoever watches it (the daemon's health, metrics and alerts): a no-op base."""

from __future__ import annotations

from .changes import ApplyResult


class Observer:
    """Called from a pair's run thread at each step; every method must return quickly and never raise.

    The base class ignores everything, so `cdc run` and the tests run a pair with no one watching.
    """

    def alive(self) -> None:
        """The run made progress (a part read, a chunk copied): it is not hung."""

    def copied(self, table: str, rows: int) -> None:
        """A snapshot chunk of ``rows`` rows of ``table`` was committed."""

    def committed(self, result: ApplyResult) -> None:
        """A read of changes was committed with its checkpoint."""

    def caught_up(self) -> None:
        """A read found nothing new: the pair has applied everything its source had committed."""

    def retrying(self, error: str) -> None:
        """A database call failed with a passing fault (``error``, masked); it is retried after a back-off."""

    def recovered(self) -> None:
        """The call that was being retried works again."""
