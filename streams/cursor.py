"""Positions in the commit order of the store: cursors, and the SQL that reads past one.

Every readings row carries `batch`, the id of the transaction that wrote it. A live cursor is a
PostgreSQL snapshot (`pg_snapshot`, text form `xmin:xmax:xip,...`): the rows after it are those
visible now whose batch was not visible in it. Transactions commit in any order, and a reading
may arrive long after its reading time; neither makes a row be missed or seen twice, which a
cursor on reading time (or on a sequence drawn before commit) cannot promise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from store.query import COMMITTED_AFTER, COMMITTED_UPTO
from streams.errors import ApiError

# A pg_snapshot in text form.
_SNAPSHOT_RE: Final = re.compile(r"\d{1,20}:\d{1,20}:(?:\d{1,20}(?:,\d{1,20})*)?")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# Rows committed after the snapshot `prev`, and before the snapshot `upto`: the store's.
AFTER: Final = COMMITTED_AFTER
UPTO: Final = COMMITTED_UPTO


@dataclass(frozen=True, slots=True)
class Live:
    """Delivered: every row committed before `snapshot`."""

    snapshot: str


@dataclass(frozen=True, slots=True)
class Replay:
    """Replaying the rows committed before `snapshot` with time >= since, in (table, time,
    device) order; delivered up to and including the key (table, time, device_id)."""

    snapshot: str
    since: datetime
    table: int
    time: datetime | None
    device_id: str


@dataclass(frozen=True, slots=True)
class Watermark:
    """Aggregates: every bucket that starts before `until` has been delivered."""

    until: datetime


Cursor = Live | Replay | Watermark


def encode(cursor: Cursor) -> str:
    if isinstance(cursor, Live):
        return f"L{cursor.snapshot}"
    if isinstance(cursor, Watermark):
        return f"A{micros(cursor.until)}"
    at = "" if cursor.time is None else str(micros(cursor.time))
    return f"R{cursor.snapshot}/{micros(cursor.since)}/{cursor.table}/{at}/{cursor.device_id}"


def decode(text: str) -> Cursor:
    """A cursor from its text, or a 422 saying it is not one."""
    try:
        kind, body = text[:1], text[1:]
        if kind == "L" and _SNAPSHOT_RE.fullmatch(body):
            return Live(body)
        if kind == "A":
            return Watermark(from_micros(int(body)))
        if kind == "R":
            snap, since, table, at, device = body.split("/", 4)
            if _SNAPSHOT_RE.fullmatch(snap):
                when = None if at == "" else from_micros(int(at))
                return Replay(snap, from_micros(int(since)), int(table), when, device)
    except (ValueError, OverflowError):
        pass
    raise ApiError(422, "malformed_cursor", f"{text[:80]!r} is not a cursor of this API")


def micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
