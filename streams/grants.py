"""Grants in the store: create, request, approve, refuse, revoke, expire, and find for a read."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from devices.catalog import DEVICE_TYPES
from streams import audit
from streams.auth import Caller, forbidden
from streams.errors import ApiError
from streams.scope import AGGREGATE, POOL_DISTRICT, RAW, Grant

logger = logging.getLogger(__name__)

_COLUMNS: Final = (
    "id, owner, consumer, device_types, metrics, districts, bbox, granularity, interval_s,"
    " pool, min_devices, purpose, expires_at, status, created_by, created_at, decided_by,"
    " decided_at, note"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM grants"  # noqa: S608 - constant column list
_RETURNING: Final = " RETURNING " + _COLUMNS
_INSERT: Final = (
    "INSERT INTO grants (owner, consumer, device_types, metrics, districts, bbox,"  # noqa: S608
    " granularity, interval_s, pool, min_devices, purpose, expires_at, status,"
    " created_by, decided_by, decided_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)" + _RETURNING
)
_EXPIRE: Final = (
    "UPDATE grants SET status = 'expired', decided_at = now()"  # noqa: S608
    " WHERE status = 'active' AND expires_at <= now()" + _RETURNING
)
_DECIDE: Final = (
    "UPDATE grants SET status = %s, decided_by = %s, decided_at = now(), note = %s"  # noqa: S608
    " WHERE id = %s" + _RETURNING
)
NOT_FOUND: Final = 404
CONFLICT: Final = 409


@dataclass(frozen=True, slots=True)
class GrantSpec:
    """What an owner grants (or a consumer asks for)."""

    owner: str
    consumer: str
    device_types: tuple[str, ...]
    metrics: tuple[str, ...]
    districts: tuple[str, ...] | None
    bbox: tuple[float, float, float, float] | None
    granularity: str
    interval_s: int | None
    pool: str | None
    min_devices: int | None
    purpose: str
    expires_at: datetime


async def create(
    conn: psycopg.AsyncConnection[Any],
    caller: Caller,
    spec: GrantSpec,
    *,
    min_pool: int,
    detail: Mapping[str, Any] | None = None,
) -> Grant:
    """A grant by its owner (active at once), or a request by a consumer (to be approved);
    `detail` goes into the audit entry beside the purpose."""
    own = caller.service == spec.owner
    if own and spec.consumer == caller.principal:
        raise ApiError(422, "self_grant", "a service reads its own data without a grant")
    if not own and spec.consumer != caller.principal:
        raise forbidden(
            "not_owner",
            f"only {spec.owner} grants its data; {caller.principal} may request a grant for "
            "itself (consumer = itself)",
        )
    _check_shape(spec)
    async with conn.transaction():
        await _check_consumer(conn, spec.consumer)
        await check_personal_data(conn, spec, min_pool=min_pool)
        status = "active" if own else "requested"
        cur = await conn.execute(
            _INSERT,
            (
                spec.owner, spec.consumer, list(spec.device_types), list(spec.metrics),
                None if spec.districts is None else list(spec.districts),
                None if spec.bbox is None else list(spec.bbox),
                spec.granularity, spec.interval_s, spec.pool, spec.min_devices, spec.purpose,
                spec.expires_at, status, caller.principal,
                caller.principal if own else None, datetime.now(UTC) if own else None,
            ),
        )  # fmt: skip
        grant = _grant(await cur.fetchone())
        action = "grant.create" if own else "grant.request"
        await audit.record(
            conn, _event(caller, action, grant, purpose=spec.purpose, **(detail or {}))
        )
    return grant


async def decide(
    conn: psycopg.AsyncConnection[Any],
    caller: Caller,
    grant_id: int,
    *,
    approve: bool,
    note: str,
    min_pool: int,
) -> Grant:
    """The owner approves or refuses a requested grant."""
    async with conn.transaction():
        grant = await _locked(conn, grant_id)
        _require_owner(caller, grant, "decide on")
        if grant.status != "requested":
            raise ApiError(CONFLICT, "not_requested", f"grant {grant_id} is {grant.status}")
        if approve:
            if grant.expires_at <= datetime.now(UTC):
                raise ApiError(CONFLICT, "already_expired", f"grant {grant_id} has expired")
            await check_personal_data(conn, _spec(grant), min_pool=min_pool)
        status = "active" if approve else "refused"
        grant = await _update(conn, grant_id, status, caller.principal, note)
        action = "grant.approve" if approve else "grant.refuse"
        await audit.record(conn, _event(caller, action, grant, note=note))
    return grant


async def revoke(
    conn: psycopg.AsyncConnection[Any], caller: Caller, grant_id: int, *, note: str
) -> Grant:
    """The owner (or the coordinator) ends a grant now: live delivery and history stop."""
    async with conn.transaction():
        grant = await _locked(conn, grant_id)
        if not caller.is_coordinator:
            _require_owner(caller, grant, "revoke")
        if grant.status not in ("active", "requested"):
            raise ApiError(CONFLICT, "not_active", f"grant {grant_id} is {grant.status}")
        grant = await _update(conn, grant_id, "revoked", caller.principal, note)
        await audit.record(conn, _event(caller, "grant.revoke", grant, note=note))
    return grant


async def expire_due(conn: psycopg.AsyncConnection[Any], *, actor: str) -> list[Grant]:
    """Mark grants past their expiry as expired, once (many gateways may race to do it)."""
    async with conn.transaction():
        cur = await conn.execute(_EXPIRE)
        expired = [_grant(row) for row in await cur.fetchall()]
        await audit.record_many(
            conn,
            [audit.Event(actor, "grant.expire", g.owner, g.consumer, g.id) for g in expired],
        )
    return expired


async def get(conn: psycopg.AsyncConnection[Any], grant_id: int) -> Grant:
    """A grant by id, whoever asks (callers check who may see it)."""
    cur = await conn.execute(_SELECT + " WHERE id = %s", (grant_id,))
    row = await cur.fetchone()
    if row is None:
        raise ApiError(NOT_FOUND, "unknown_grant", f"no grant {grant_id}")
    return _grant(row)


async def visible_to(
    conn: psycopg.AsyncConnection[Any], caller: Caller, *, status: str | None = None
) -> list[Grant]:
    """Grants the caller owns or holds; every grant for the coordinator."""
    cur = await conn.execute(
        _SELECT + " WHERE (%(all)s OR owner = %(me)s OR consumer = %(me)s)"
        " AND (%(st)s::text IS NULL OR status = %(st)s) ORDER BY id",
        {"all": caller.is_coordinator, "me": caller.principal, "st": status},
    )
    return [_grant(row) for row in await cur.fetchall()]


async def usable(conn: psycopg.AsyncConnection[Any], caller: Caller, grant_id: int) -> Grant:
    """The caller's grant, if it is live now; else a 403 saying why."""
    grant = await get(conn, grant_id)
    if grant.consumer != caller.principal:
        raise forbidden("not_grantee", f"grant {grant_id} is not held by {caller.principal}")
    if grant.status == "active" and grant.expires_at <= datetime.now(UTC):
        raise forbidden("grant_expired", f"grant {grant_id} expired at {grant.expires_at}")
    if grant.status != "active":
        raise forbidden(f"grant_{grant.status}", f"grant {grant_id} is {grant.status}")
    return grant


async def covering(
    conn: psycopg.AsyncConnection[Any], caller: Caller, device_type: str | None
) -> Grant:
    """The caller's live grant for a device type when the request names none."""
    cur = await conn.execute(
        _SELECT + " WHERE consumer = %s AND status = 'active' AND expires_at > now()"
        " AND (%s::text IS NULL OR %s = ANY(device_types)) ORDER BY id",
        (caller.principal, device_type, device_type),
    )
    found = [_grant(row) for row in await cur.fetchall()]
    if not found:
        what = f"device type {device_type!r}" if device_type else "any data"
        raise forbidden("no_grant", f"{caller.principal} holds no live grant for {what}")
    if len(found) > 1:
        ids = ", ".join(str(g.id) for g in found)
        raise ApiError(422, "grant_required", f"several grants apply ({ids}): name one")
    return found[0]


async def check_personal_data(
    conn: psycopg.AsyncConnection[Any], spec: GrantSpec, *, min_pool: int
) -> None:
    """Personal data leaves only as aggregates pooled per district over >= min_pool devices."""
    if spec.granularity == AGGREGATE and spec.pool == POOL_DISTRICT:
        if (spec.min_devices or min_pool) < min_pool:
            raise forbidden(
                "pool_too_small",
                f"aggregates are pooled over at least {min_pool} devices, not {spec.min_devices}",
            )
        return
    personal = [t for t in spec.device_types if DEVICE_TYPES[t].personal_data_default]
    if not personal:
        districts = None if spec.districts is None else list(spec.districts)
        cur = await conn.execute(
            "SELECT DISTINCT device_type FROM devices WHERE service = %s AND personal_data"
            " AND device_type = ANY(%s) AND (%s::text[] IS NULL OR district = ANY(%s))",
            (spec.owner, list(spec.device_types), districts, districts),
        )
        personal = [row[0] for row in await cur.fetchall()]
    if personal:
        raise forbidden(
            "personal_data",
            f"{', '.join(personal)} data is personal: grant it only as aggregates pooled per "
            f"district over at least {min_pool} devices",
        )


def _check_shape(spec: GrantSpec) -> None:
    unknown = [t for t in spec.device_types if t not in DEVICE_TYPES]
    if unknown or not spec.device_types:
        raise ApiError(422, "unknown_device_type", f"unknown device type(s) {unknown or '[]'}")
    known = {m for t in spec.device_types for m in DEVICE_TYPES[t].metric_names}
    bad = [m for m in spec.metrics if m not in known]
    if bad:
        types = ", ".join(spec.device_types)
        raise ApiError(422, "unknown_metric", f"{', '.join(bad)} not a metric of {types}")
    if spec.granularity == RAW and (spec.interval_s or spec.pool):
        raise ApiError(422, "raw_with_interval", "a raw grant takes no interval or pool")
    if spec.granularity == AGGREGATE and (spec.interval_s is None or spec.pool is None):
        raise ApiError(422, "aggregate_needs_interval", "an aggregate grant needs interval, pool")
    if spec.expires_at <= datetime.now(UTC):
        raise ApiError(422, "expiry_in_past", f"expires_at {spec.expires_at} has passed")


async def _check_consumer(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    cur = await conn.execute("SELECT kind FROM principals WHERE name = %s", (name,))
    row = await cur.fetchone()
    if row is None or row[0] not in ("service", "team"):
        raise ApiError(422, "unknown_consumer", f"{name!r} is not a registered service or team")


def _require_owner(caller: Caller, grant: Grant, verb: str) -> None:
    if caller.service != grant.owner:
        raise forbidden("not_owner", f"only {grant.owner} may {verb} grant {grant.id}")


async def _locked(conn: psycopg.AsyncConnection[Any], grant_id: int) -> Grant:
    cur = await conn.execute(_SELECT + " WHERE id = %s FOR UPDATE", (grant_id,))
    row = await cur.fetchone()
    if row is None:
        raise ApiError(NOT_FOUND, "unknown_grant", f"no grant {grant_id}")
    return _grant(row)


async def _update(
    conn: psycopg.AsyncConnection[Any], grant_id: int, status: str, actor: str, note: str
) -> Grant:
    cur = await conn.execute(
        _DECIDE,
        (status, actor, note, grant_id),
    )
    return _grant(await cur.fetchone())


def _event(caller: Caller, action: str, grant: Grant, **detail: Any) -> audit.Event:
    return audit.Event(
        caller.principal, action, grant.owner, grant.consumer, grant.id, None, 0, detail
    )


def _spec(g: Grant) -> GrantSpec:
    return GrantSpec(
        g.owner, g.consumer, g.device_types, g.metrics, g.districts, g.bbox, g.granularity,
        g.interval_s, g.pool, g.min_devices, g.purpose, g.expires_at,
    )  # fmt: skip


def _grant(row: tuple[Any, ...] | None) -> Grant:
    assert row is not None
    (gid, owner, consumer, types, metrics, districts, bbox, *rest) = row
    return Grant(
        gid, owner, consumer, tuple(types), tuple(metrics),
        None if districts is None else tuple(districts),
        None if bbox is None else (bbox[0], bbox[1], bbox[2], bbox[3]),
        *rest,
    )  # fmt: skip
