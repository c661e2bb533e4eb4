"""The queues a pair parks changes in: dead letters (refused, or held behind one) and conflicts
(left for a person): listed, shown, retried, discarded and resolved, through the audited apply path."""

from ._api import conflict, conflicts, dead_letter, dead_letters, discard, resolve, retry
from ._letters import Outcome
from ._rows import Conflict, Letter

__all__ = ["Conflict", "Letter", "Outcome", "conflict", "conflicts", "dead_letter", "dead_letters", "discard",
           "resolve", "retry"]
