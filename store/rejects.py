"""The dead-letter table: newest first, counts, pages to replay and settle, expiry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

# Rows deleted per statement when expiring: short transactions, and no lock held for long on
# a table the ingestors insert into.
_EXPIRE_CHUNK: Final = 10_000

_FILTER: Final = sql.SQL(
    "(%(reason)s::text IS NULL OR reason = %(reason)s)"
    " AND (%(device)s::text IS NULL OR device_id = %(device)s)"
    " AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
)


@dataclass(frozen=True, slots=True)
class RejectFilter:
    """Which dead letters a command works on; None matches any."""

    reason: str | None = None
    device: str | None = None
    since: datetime | None = None

    def params(self) -> dict[str, Any]:
        return {"reason": self.reason, "device": self.device, "since": self.since}


@dataclass(frozen=True, slots=True)
class StoredReject:
    """A dead letter as stored: enough to decode it again."""

    id: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class RejectCount:
    reason: str
    device_id: str | None  # None in a count by reason alone, or for a topic with no device
    count: int
    first: datetime
    last: datetime


def reject_stats(
    conn: psycopg.Connection[Any], where: RejectFilter, *, by_device: bool = True
) -> list[RejectCount]:
    """Dead letters counted by reason (and device), the most frequent first."""
    query = sql.SQL(
        "SELECT reason, {device}, count(*), min(received_at), max(received_at)"
        " FROM rejected_messages WHERE {filter} GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2"
    ).format(device=sql.SQL("device_id" if by_device else "NULL::text"), filter=_FILTER)
    rows = conn.execute(query, where.params()).fetchall()
    return [RejectCount(r[0], r[1], int(r[2]), r[3], r[4]) for r in rows]


def newest_rejects(
    conn: psycopg.Connection[Any], where: RejectFilter, *, limit: int
) -> list[StoredReject]:
    """The `limit` most recently received dead letters, newest first."""
    query = sql.SQL(
        "SELECT id, received_at, topic, device_id, reason, detail, payload"
        " FROM rejected_messages WHERE {filter}"
        " ORDER BY received_at DESC, id DESC LIMIT %(limit)s"
    ).format(filter=_FILTER)
    rows = conn.execute(query, {**where.params(), "limit": limit}).fetchall()
    return [StoredReject(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in rows]


async def reject_page(
    conn: psycopg.AsyncConnection[Any], where: RejectFilter, *, after_id: int, limit: int
) -> list[StoredReject]:
    """The next `limit` dead letters past `after_id`, in id (arrival) order."""
    query = sql.SQL(
        "SELECT id, received_at, topic, device_id, reason, detail, payload"
        " FROM rejected_messages WHERE id > %(after)s AND {filter} ORDER BY id LIMIT %(limit)s"
    ).format(filter=_FILTER)
    cur = await conn.execute(query, {**where.params(), "after": after_id, "limit": limit})
    rows = await cur.fetchall()
    return [StoredReject(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in rows]


async def update_reasons(
    conn: psycopg.AsyncConnection[Any], changes: Sequence[tuple[int, str, str]]
) -> None:
    """Give dead letters that still fail the reason and detail they fail with now."""
    if not changes:
        return
    await conn.execute(
        "UPDATE rejected_messages AS r SET reason = u.reason, detail = u.detail"
        " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(id, reason, detail)"
        " WHERE r.id = u.id",
        (
            [c[0] for c in changes],
            [c[1] for c in changes],
            [c[2].replace("\x00", "\\u0000") for c in changes],  # text cannot hold NUL
        ),
    )


def expire_rejects(conn: psycopg.Connection[Any], before: datetime) -> int:
    """Delete dead letters received before `before`, a chunk per transaction; returns how many."""
    deleted = 0
    while True:
        cur = conn.execute(
            "DELETE FROM rejected_messages WHERE id IN (SELECT id FROM rejected_messages"
            " WHERE received_at < %s LIMIT %s)",
            (before, _EXPIRE_CHUNK),
        )
        deleted += max(cur.rowcount, 0)
        if cur.rowcount < _EXPIRE_CHUNK:
            return deleted
