"""The root error of the ingest package."""


class IngestError(Exception):
    """The ingestor cannot start or go on (bad settings, broker or database unreachable)."""
