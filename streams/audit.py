"""The access audit: every grant decision, subscription, history read and delivery batch."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import psycopg

logger = logging.getLogger(__name__)

_INSERT: Final = (
    "INSERT INTO audit_log (actor, action, owner, consumer, grant_id, subscription_id,"
    " readings, detail) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::bigint[], %s::text[], %s::bigint[], %s::jsonb[])"
)


@dataclass(frozen=True, slots=True)
class Event:
    """One access, as it goes into `audit_log`."""

    actor: str
    action: str
    owner: str | None = None
    consumer: str | None = None
    grant_id: int | None = None
    subscription_id: str | None = None
    readings: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    at: datetime
    actor: str
    action: str
    owner: str | None
    consumer: str | None
    grant_id: int | None
    subscription_id: str | None
    readings: int
    detail: dict[str, Any]


async def record(conn: psycopg.AsyncConnection[Any], *events: Event) -> None:
    """Append events (in the caller's transaction, so they commit with what they describe)."""
    await record_many(conn, events)


async def record_many(conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
    if not events:
        return
    await conn.execute(
        _INSERT,
        (
            [e.actor for e in events],
            [e.action for e in events],
            [e.owner for e in events],
            [e.consumer for e in events],
            [e.grant_id for e in events],
            [e.subscription_id for e in events],
            [e.readings for e in events],
            [json.dumps(dict(e.detail), default=str) for e in events],
        ),
    )


async def entries(
    conn: psycopg.AsyncConnection[Any],
    *,
    owner: str | None,
    grant_id: int | None = None,
    subscription_id: str | None = None,
    action: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Entry]:
    """Newest first; `owner` None means every owner's (the coordinator's view)."""
    cur = await conn.execute(
        "SELECT id, at, actor, action, owner, consumer, grant_id, subscription_id, readings,"
        " detail FROM audit_log"
        " WHERE (%(o)s::text IS NULL OR owner = %(o)s)"
        " AND (%(g)s::bigint IS NULL OR grant_id = %(g)s)"
        " AND (%(s)s::text IS NULL OR subscription_id = %(s)s)"
        " AND (%(a)s::text IS NULL OR action = %(a)s)"
        " AND (%(b)s::bigint IS NULL OR id < %(b)s)"
        " ORDER BY id DESC LIMIT %(n)s",
        {"o": owner, "g": grant_id, "s": subscription_id, "a": action, "b": before, "n": limit},
    )
    return [Entry(*row) for row in await cur.fetchall()]
