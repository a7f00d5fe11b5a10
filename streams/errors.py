"""The root error of the streams package, and the API's error with its HTTP status and reason."""

from __future__ import annotations


class StreamsError(Exception):
    """Something about sharing, delivery or the HTTP API went wrong."""


class ApiError(StreamsError):
    """A request refused with an HTTP status and a machine-readable reason code.

    The body is `{"reason": ..., "detail": ...}`: `reason` is stable (clients branch on it),
    `detail` is for people.
    """

    def __init__(
        self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
