"""Subscriptions in the store: create within a grant, list, delete, acknowledge a position."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from devices.broker_auth import DELIVERIES
from devices.catalog import DEVICE_TYPES
from store.aggregates import ORIGIN
from streams import audit, cursor, grants, urls
from streams.auth import Caller, forbidden
from streams.errors import ApiError
from streams.scope import AGGREGATE, Grant, Scope, narrow

logger = logging.getLogger(__name__)

_COLUMNS: Final = (
    "id, consumer, grant_id, device_types, metrics, districts, delivery, webhook_url, secret,"
    " cursor, status, note, created_at"
)
_SELECT: Final = "SELECT " + _COLUMNS + " FROM subscriptions"  # noqa: S608 - constant columns
_INSERT: Final = (
    "INSERT INTO subscriptions (id, consumer, grant_id, device_types, metrics,"  # noqa: S608
    " districts, delivery, webhook_url, secret, cursor, start_cursor)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING " + _COLUMNS
)
DELIVERIES_KINDS: Final = ("sse", "webhook", "mqtt")


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    consumer: str
    grant_id: int
    device_types: tuple[str, ...]
    metrics: tuple[str, ...]
    districts: tuple[str, ...] | None
    delivery: str
    webhook_url: str | None
    secret: str | None
    cursor: str
    status: str
    note: str
    created_at: datetime

    @property
    def topic(self) -> str | None:
        """Where MQTT delivery publishes: readable by the consumer alone (broker ACL)."""
        return f"{DELIVERIES}/{self.consumer}/{self.id}" if self.delivery == "mqtt" else None


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    grant_id: int
    device_types: tuple[str, ...]
    metrics: tuple[str, ...]
    districts: tuple[str, ...]
    delivery: str
    webhook_url: str | None
    since: datetime | None


def scopes(grant: Grant, sub: Subscription | SubscriptionSpec) -> list[Scope]:
    """The scopes a subscription reads, one per device type; a 403 if outside the grant."""
    out = []
    for device_type in sub.device_types or grant.device_types:
        names = DEVICE_TYPES[device_type].metric_names if device_type in DEVICE_TYPES else ()
        wanted = [m for m in sub.metrics if m in names]
        if sub.metrics and not wanted and device_type in grant.device_types:
            continue  # the metrics asked for are all another type's
        out.append(narrow(grant, device_type, wanted, sub.districts or ()))
    if not out:
        raise ApiError(422, "nothing_selected", "no device type carries the metrics asked for")
    return out


async def create(
    conn: psycopg.AsyncConnection[Any],
    caller: Caller,
    spec: SubscriptionSpec,
    *,
    webhook_allow: Sequence[str],
) -> Subscription:
    """A subscription of the caller under one of its live grants, starting now or at `since`."""
    grant = await grants.usable(conn, caller, spec.grant_id)
    _check_metrics(grant, spec)
    scopes(grant, spec)
    secret = None
    url = spec.webhook_url
    if spec.delivery == "webhook":
        url = _webhook_target(spec.webhook_url, webhook_allow)
        secret = secrets.token_urlsafe(32)
    elif spec.webhook_url:
        raise ApiError(422, "webhook_url_unexpected", f"{spec.delivery} takes no webhook_url")
    start = await _start(conn, grant, spec.since)
    sub_id = "s" + secrets.token_hex(8)
    async with conn.transaction():
        cur = await conn.execute(
            _INSERT,
            (
                sub_id, caller.principal, grant.id, list(spec.device_types),
                list(spec.metrics), list(spec.districts) or None, spec.delivery,
                url, secret, cursor.encode(start), cursor.encode(start),
            ),
        )  # fmt: skip
        sub = _subscription(await cur.fetchone())
        detail = {"delivery": spec.delivery, "since": spec.since, "url": url}
        await audit.record(
            conn,
            audit.Event(
                caller.principal, "subscription.create", grant.owner, grant.consumer, grant.id,
                sub.id, 0, detail,
            ),
        )  # fmt: skip
    return sub


async def get(conn: psycopg.AsyncConnection[Any], caller: Caller, sub_id: str) -> Subscription:
    cur = await conn.execute(_SELECT + " WHERE id = %s AND status <> 'deleted'", (sub_id,))
    row = await cur.fetchone()
    if row is None:
        raise ApiError(404, "unknown_subscription", f"no subscription {sub_id!r}")
    sub = _subscription(row)
    if sub.consumer == caller.principal:
        return sub
    if caller.is_coordinator and await _party(conn, caller, sub):
        return sub
    if not caller.is_coordinator and await _party(conn, caller, sub):
        raise forbidden("not_subscriber", f"subscription {sub_id} is {sub.consumer}'s")
    # Another organisation's subscription is not there, as far as the caller can tell.
    raise ApiError(404, "unknown_subscription", f"no subscription {sub_id!r}")


async def _party(conn: psycopg.AsyncConnection[Any], caller: Caller, sub: Subscription) -> bool:
    """Whether the caller's organisation holds the subscription or owns the data it reads."""
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM subscriptions s JOIN grants g ON g.id = s.grant_id"
        " WHERE s.id = %(id)s AND %(org)s IN (s.consumer_org, g.owner_org))",
        {"id": sub.id, "org": caller.organisation},
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def mine(conn: psycopg.AsyncConnection[Any], caller: Caller) -> list[Subscription]:
    cur = await conn.execute(
        _SELECT  # noqa: S608 - constant column list
        + " WHERE (consumer = %(me)s OR (%(coord)s AND (consumer_org = %(org)s"
        " OR grant_id IN (SELECT id FROM grants WHERE owner_org = %(org)s))))"
        " AND status <> 'deleted' ORDER BY created_at",
        {"me": caller.principal, "coord": caller.is_coordinator, "org": caller.organisation},
    )
    return [_subscription(row) for row in await cur.fetchall()]


async def delete(conn: psycopg.AsyncConnection[Any], caller: Caller, sub_id: str) -> None:
    sub = await get(conn, caller, sub_id)
    async with conn.transaction():
        await conn.execute(
            "UPDATE subscriptions SET status = 'deleted', updated_at = now() WHERE id = %s",
            (sub_id,),
        )
        grant = await grants.get(conn, sub.grant_id)
        await audit.record(
            conn,
            audit.Event(
                caller.principal, "subscription.delete", grant.owner, sub.consumer, grant.id,
                sub.id,
            ),
        )  # fmt: skip


async def acknowledge(
    conn: psycopg.AsyncConnection[Any], caller: Caller, sub_id: str, position: str
) -> Subscription:
    """Store the consumer's last processed position: a reconnect resumes after it."""
    sub = await get(conn, caller, sub_id)
    await check_position(conn, sub, position)
    await conn.execute(
        "UPDATE subscriptions SET cursor = %s, updated_at = now() WHERE id = %s", (position, sub.id)
    )
    return sub


async def check_position(
    conn: psycopg.AsyncConnection[Any], sub: Subscription, position: str
) -> cursor.Cursor:
    """`position` as a cursor of `sub`, or a 422: a cursor of another kind, from before the
    subscription started (a forged `L1:1:`, `A0`), of another replay, or from the future."""
    found = cursor.decode(position)
    cur = await conn.execute(
        "SELECT s.start_cursor, pg_current_snapshot()::text FROM subscriptions s WHERE s.id = %s",
        (sub.id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise ApiError(404, "unknown_subscription", f"no subscription {sub.id!r}")
    problem = cursor.belongs(found, cursor.decode(row[0]), row[1])
    if problem is not None:
        raise ApiError(
            422, "cursor_not_of_subscription", f"{position[:80]!r} is not a position of {sub.id}: "
            f"{problem}",
        )  # fmt: skip
    return found


async def stop(conn: psycopg.AsyncConnection[Any], sub_id: str, note: str) -> bool:
    """Stop an active subscription; whether this call stopped it (False: it was not active)."""
    cur = await conn.execute(
        "UPDATE subscriptions SET status = 'stopped', note = %s, updated_at = now()"
        " WHERE id = %s AND status = 'active'",
        (note, sub_id),
    )
    return cur.rowcount > 0


async def for_delivery(conn: psycopg.AsyncConnection[Any]) -> list[Subscription]:
    """Active webhook and MQTT subscriptions, which a gateway delivers on its own."""
    cur = await conn.execute(
        _SELECT + " WHERE status = 'active' AND delivery IN ('webhook', 'mqtt') ORDER BY id"
    )
    return [_subscription(row) for row in await cur.fetchall()]


async def _start(
    conn: psycopg.AsyncConnection[Any], grant: Grant, since: datetime | None
) -> cursor.Cursor:
    if grant.granularity == AGGREGATE:
        assert grant.interval_s is not None
        step = timedelta(seconds=grant.interval_s)
        at = since or datetime.now(UTC)
        return cursor.Watermark(ORIGIN + ((at - ORIGIN) // step) * step)
    cur = await conn.execute("SELECT pg_current_snapshot()::text")
    row = await cur.fetchone()
    assert row is not None
    if since is None:
        return cursor.Live(row[0])
    return cursor.Replay(row[0], since, 0, None, "")


def _webhook_target(url: str | None, allow: Sequence[str]) -> str:
    """The URL deliveries go to, in normal form (streams.urls), once it is under the allow-list;
    a 403 that says why for any other."""
    if not url:
        raise ApiError(422, "webhook_url_required", "a webhook subscription needs webhook_url")
    try:
        target = urls.normalise(url)
    except urls.UrlRefused as exc:
        raise forbidden("webhook_not_allowed", f"{url[:200]!r}: {exc}") from None
    if not urls.matching(target, allow):
        raise forbidden(
            "webhook_not_allowed",
            f"{target.url} is not under an allowed webhook prefix "
            "(SILOBREAK_STREAMS_WEBHOOK_ALLOW)",
        )
    return target.url


def _check_metrics(grant: Grant, spec: SubscriptionSpec) -> None:
    types = spec.device_types or grant.device_types
    granted = {m for t in types if t in grant.device_types for m in grant.metrics_of(t)}
    outside = [m for m in spec.metrics if m not in granted]
    if outside:
        raise forbidden(
            "metric_not_granted", f"grant {grant.id} does not cover {', '.join(outside)}"
        )


def _subscription(row: tuple[Any, ...] | None) -> Subscription:
    assert row is not None
    sid, consumer, gid, types, metrics, districts, *rest = row
    return Subscription(
        sid, consumer, gid, tuple(types), tuple(metrics),
        None if districts is None else tuple(districts), *rest,
    )  # fmt: skip
