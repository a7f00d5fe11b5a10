"""The root error of the store package and its kinds."""


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
