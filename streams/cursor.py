"""Positions in the commit order of the store: cursors, and the SQL that reads past one.

Every readings row carries `batch`, the id of the transaction that wrote it. A live cursor is a
PostgreSQL snapshot (`pg_snapshot`, text form `xmin:xmax:xip,...`): the rows after it are those
visible now whose batch was not visible in it. Transactions commit in any order, and a reading
may arrive long after its reading time; neither makes a row be missed or seen twice, which a
cursor on reading time (or on a sequence drawn before commit) cannot promise.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from store.query import COMMITTED_AFTER, COMMITTED_UPTO
from streams.errors import ApiError

# A pg_snapshot in text form.
_SNAPSHOT_RE: Final = re.compile(r"\d{1,20}:\d{1,20}:(?:\d{1,20}(?:,\d{1,20})*)?")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Transaction ids (xid8) are below 2^63 in practice; bigger text wraps around in PostgreSQL.
_XID_LIMIT: Final = 2**63
# A subscription reads at most one scope per device type of the catalog.
_MAX_TABLES: Final = 64

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
class Catchup:
    """Catching up from `prev` to `upto` (rows committed after the one and before the other),
    one page at a time in (table, time, device) order; delivered up to and including the key.
    Once finished it is `Live(upto)`."""

    prev: str
    upto: str
    table: int
    time: datetime
    device_id: str


@dataclass(frozen=True, slots=True)
class Watermark:
    """Aggregates: every bucket that starts before `until` has been delivered."""

    until: datetime


Cursor = Live | Replay | Catchup | Watermark


def encode(cursor: Cursor) -> str:
    if isinstance(cursor, Live):
        return f"L{cursor.snapshot}"
    if isinstance(cursor, Watermark):
        return f"A{micros(cursor.until)}"
    if isinstance(cursor, Catchup):
        return (
            f"C{cursor.prev}/{cursor.upto}/{cursor.table}/{micros(cursor.time)}/{cursor.device_id}"
        )
    at = "" if cursor.time is None else str(micros(cursor.time))
    return f"R{cursor.snapshot}/{micros(cursor.since)}/{cursor.table}/{at}/{cursor.device_id}"


def decode(text: str) -> Cursor:
    """A cursor from its text, or a 422 saying it is not one (also for a snapshot PostgreSQL
    would refuse: its error must not reach the caller as a 500)."""
    found = _decode(text)
    if all(_well_formed(snap) for snap in snapshots(found)):
        return found
    raise ApiError(422, "malformed_cursor", f"{text[:80]!r} is not a cursor of this API")


def snapshots(position: Cursor) -> tuple[str, ...]:
    """The snapshots a cursor holds."""
    if isinstance(position, Live | Replay):
        return (position.snapshot,)
    if isinstance(position, Catchup):
        return (position.prev, position.upto)
    return ()


def _well_formed(snapshot: str) -> bool:
    """What PostgreSQL accepts as a pg_snapshot: 1 <= xmin <= xmax, and the in-progress ids
    in order within [xmin, xmax)."""
    xmin, xmax, xip = snapshot.split(":")
    ids = [int(x) for x in xip.split(",") if x]
    bounds = [int(xmin), *ids, int(xmax)]
    return (
        1 <= bounds[0] <= bounds[-1] < _XID_LIMIT
        and all(a <= b for a, b in itertools.pairwise(bounds[:-1]))
        and (not ids or ids[-1] < bounds[-1])
    )


def _decode(text: str) -> Cursor:
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
                return Replay(snap, from_micros(int(since)), _table(table), when, device)
        if kind == "C":
            prev, upto, table, at, device = body.split("/", 4)
            if _SNAPSHOT_RE.fullmatch(prev) and _SNAPSHOT_RE.fullmatch(upto):
                return Catchup(prev, upto, _table(table), from_micros(int(at)), device)
    except (ValueError, OverflowError):
        pass
    raise ApiError(422, "malformed_cursor", f"{text[:80]!r} is not a cursor of this API")


def belongs(position: Cursor, start: Cursor, now: str) -> str | None:
    """Why `position` cannot be a position of the subscription that started at `start` (None
    when it can), `now` being the current snapshot: a position is one the subscription could
    have reached, never one before its start nor past the present.

    Snapshots are compared exactly: S is at or after S0 when every transaction visible in S0
    is visible in S (xmax is monotonic, and none of S's in-progress transactions was visible in
    S0)."""
    if isinstance(start, Watermark):
        if not isinstance(position, Watermark):
            return "this subscription's cursors are aggregate watermarks (A...)"
        if position.until < start.until:
            return "the watermark is before the subscription's start"
        return None
    if isinstance(position, Watermark):
        return "this subscription's cursors are not aggregate watermarks"
    if isinstance(start, Catchup):
        return "a subscription starts at a snapshot"
    origin = start.snapshot
    if isinstance(position, Replay):
        if not isinstance(start, Replay) or (position.snapshot, position.since) != (
            origin,
            start.since,
        ):
            return "a replay cursor of another start or another since"
        return None
    if isinstance(position, Live):
        steps = [origin, position.snapshot, now]
    else:
        steps = [origin, position.prev, position.upto, now]
    for earlier, later in itertools.pairwise(steps):
        if not covers(later, earlier):
            return "the position is before the subscription's start or in the future"
    return None


def covers(later: str, earlier: str) -> bool:
    """Whether every transaction visible in snapshot `earlier` is visible in `later`."""
    _, xmax0, xip0 = _parse(earlier)
    _, xmax, xip = _parse(later)
    if xmax < xmax0:
        return False
    return all(x >= xmax0 or x in xip0 for x in xip)


def _parse(snapshot: str) -> tuple[int, int, frozenset[int]]:
    xmin, xmax, xip = snapshot.split(":")
    return int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x)


def _table(text: str) -> int:
    index = int(text)
    if not 0 <= index < _MAX_TABLES:
        raise ValueError(text)
    return index


def micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)
