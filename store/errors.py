"""The root error of the store package and its kinds."""


class StoreError(Exception):
    """The store could not do what was asked."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now; retry later (connection refused, lost, shutting down)."""


class MigrationError(StoreError):
    """A migration failed or the database is in a state migrations cannot handle."""
