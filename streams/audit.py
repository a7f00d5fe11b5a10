"""The access audit: every grant decision, subscription, history read and delivery batch.

Every entry commits with what it describes, or before it: a decision, a subscription change
or a history read in the same transaction; a webhook or MQTT batch in the statement that
moves the subscription's cursor (`record_delivery`); an SSE batch before it is written to the
consumer's connection (`Recorder`). None waits in memory for a later flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import psycopg

from retries import Backoff, Policy
from streams.errors import StreamsError

logger = logging.getLogger(__name__)

_COLUMNS: Final = "actor, action, owner, consumer, grant_id, subscription_id, readings, detail"
_INSERT: Final = (
    f"INSERT INTO audit_log ({_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::text[],"  # noqa: S608
    " %s::text[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::jsonb[])"
)
# One statement, so one transaction even on an autocommit connection: the cursor moves and
# the batch is on record together, or neither.
_ADVANCE: Final = (
    "WITH moved AS (UPDATE subscriptions SET cursor = %(cursor)s, updated_at = now()"  # noqa: S608
    " WHERE id = %(subscription_id)s RETURNING id)"
    f" INSERT INTO audit_log ({_COLUMNS})"
    " SELECT %(actor)s, %(action)s, %(owner)s, %(consumer)s, %(grant_id)s, moved.id,"
    " %(readings)s, %(detail)s::jsonb FROM moved"
)
# A writer that finds the store unavailable tries again within this (jittered down to half,
# so the gateways of a deployment do not all come back at one instant).
RETRY_S: Final = 1.0


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


class RecorderClosed(StreamsError):
    """The recorder stopped before an event could be written."""


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
            [_json(e.detail) for e in events],
        ),
    )


async def record_delivery(conn: psycopg.AsyncConnection[Any], cursor: str, event: Event) -> None:
    """Move the subscription's cursor to `cursor` and put the batch on record, in one statement.

    Alone on an autocommit connection it is its own transaction; inside the caller's, it
    commits with the rest of it (a webhook batch marked delivered).
    """
    await conn.execute(
        _ADVANCE,
        {
            "cursor": cursor, "subscription_id": event.subscription_id, "actor": event.actor,
            "action": event.action, "owner": event.owner, "consumer": event.consumer,
            "grant_id": event.grant_id, "readings": event.readings, "detail": _json(event.detail),
        },
    )  # fmt: skip


class Recorder:
    """Writes events before the access they describe: `write` returns a future done once its
    event is committed, and the caller sends only then.

    One INSERT carries every event that arrived while the previous one was being written, so
    the batches of many feeds in one tick cost a statement or two, not one each. A caller that
    gives up (cancels its future) before its turn is left out. While the store is unavailable
    events wait, in order, and the writer tries again within RETRY_S: the callers wait too.
    """

    def __init__(self, conninfo: str, *, retry_s: float = RETRY_S) -> None:
        self._conninfo = conninfo
        self._retry = Policy(first=retry_s, cap=retry_s)
        self._queue: list[tuple[Event, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False

    def write(self, event: Event) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(RecorderClosed("the audit recorder has stopped"))
            return future
        self._queue.append((event, future))
        self._wake.set()
        return future

    def close(self) -> None:
        """Stop once what is queued is written (or the store refused it once more)."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        backoff = Backoff(self._retry)
        try:
            while self._queue or not self._closing:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                taken = [(e, f) for e, f in self._queue if not f.done()]
                self._queue.clear()
                if not taken:
                    continue
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self._conninfo, autocommit=True,
                            application_name="silobreak-streams-audit",
                        )  # fmt: skip
                    await record_many(conn, [e for e, _ in taken])
                    backoff.reset()
                except psycopg.OperationalError as exc:
                    logger.warning("streams audit: store unavailable; %d batch(es) wait: %s",
                                   len(taken), str(exc).strip())  # fmt: skip
                    if conn is not None:
                        await conn.close()
                    conn = None
                    self._queue[:0] = taken
                    if self._closing:
                        break
                    await self._pause(backoff.next())
                    continue
                except Exception as exc:  # noqa: BLE001 - handed to the callers, who end
                    _settle(taken, exc)
                    continue
                _settle(taken, None)
        finally:
            if conn is not None:
                await conn.close()
            _settle(self._queue, RecorderClosed("the audit recorder has stopped"))
            self._queue.clear()

    async def _pause(self, seconds: float) -> None:
        """`seconds`, or less if the recorder is closed meanwhile (new events do not cut it)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while not self._closing and (left := until - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._wake.wait()


async def entries(
    conn: psycopg.AsyncConnection[Any],
    *,
    owner: str | None,
    organisation: str | None = None,
    grant_id: int | None = None,
    subscription_id: str | None = None,
    action: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[Entry]:
    """Newest first: `owner`'s data's, or (owner None) every entry a party of `organisation`
    is in, owning or reading (a coordinator's view)."""
    cur = await conn.execute(
        "SELECT id, at, actor, action, owner, consumer, grant_id, subscription_id, readings,"
        " detail FROM audit_log"
        " WHERE (%(o)s::text IS NULL OR owner = %(o)s)"
        " AND (%(org)s::text IS NULL OR owner_org = %(org)s OR consumer_org = %(org)s)"
        " AND (%(g)s::bigint IS NULL OR grant_id = %(g)s)"
        " AND (%(s)s::text IS NULL OR subscription_id = %(s)s)"
        " AND (%(a)s::text IS NULL OR action = %(a)s)"
        " AND (%(b)s::bigint IS NULL OR id < %(b)s)"
        " ORDER BY id DESC LIMIT %(n)s",
        {
            "o": owner,
            "org": organisation,
            "g": grant_id,
            "s": subscription_id,
            "a": action,
            "b": before,
            "n": limit,
        },
    )
    return [Entry(*row) for row in await cur.fetchall()]


def _settle(
    waiting: Sequence[tuple[Event, asyncio.Future[None]]], error: BaseException | None
) -> None:
    for _, future in waiting:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _json(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), default=str)
