"""The root error of the store package, its kinds, and how an unavailable store is retried."""

from typing import Final

from retries import Policy

# Retry of an unavailable store (ingest's writers, the mirror): a blip is retried within
# 0.1 s, and the 5 s cap finds a store that is back within 5 s of its return; jittered so
# that ingestors do not retry in lockstep.
STORE_RETRY: Final = Policy(first=0.1, cap=5.0)


class StoreError(Exception):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now; retry later (connection refused, lost, shutting down)."""


class StoreRefused(StoreError):
    """The database refused a batch for what some of its rows hold (a data exception, or an
    integrity violation such as a CHECK constraint): those rows are refused again on every
    try, so retrying the batch cannot help. `why` is the database's one-line error."""

    def __init__(self, message: str, *, sqlstate: str, why: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.why = why


class MigrationError(StoreError):
    """A migration failed or the database is in a state migrations cannot handle."""


def first_line(exc: BaseException) -> str:
    """An error's first line, for one-line messages (its type's name when it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
