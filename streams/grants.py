"""Grants in the store: create, request, approve, refuse, revoke, expire, and find for a read."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
    " decided_at, note, owner_org, consumer_org, obligations, owner_approved_by,"
    " owner_approved_at, consumer_accepted_by, consumer_accepted_at"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM grants"  # noqa: S608 - constant column list
_RETURNING: Final = " RETURNING " + _COLUMNS
_INSERT: Final = (
    "INSERT INTO grants (owner, consumer, device_types, metrics, districts, bbox,"  # noqa: S608
    " granularity, interval_s, pool, min_devices, purpose, expires_at, status,"
    " created_by, decided_by, decided_at, obligations)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
    + _RETURNING
)
_EXPIRE: Final = (
    "UPDATE grants SET status = 'expired', decided_at = now()"  # noqa: S608
    " WHERE status = 'active' AND expires_at <= now()" + _RETURNING
)
_DECIDE: Final = (
    "UPDATE grants SET status = %s, decided_by = %s, decided_at = now(), note = %s"  # noqa: S608
    " WHERE id = %s" + _RETURNING
)
# A coordinator signs a contract: by whom and when (the two column names are constants).
_SIGN: Final = "UPDATE grants SET {who} = %s, {at} = now() WHERE id = %s" + _RETURNING  # noqa: S608
NOT_FOUND: Final = 404
CONFLICT: Final = 409
# Obligations a grant may carry: days after which the consumer deletes what it received, and
# the attribution it shows wherever it uses the data.
OBLIGATIONS: Final = {"delete_after_days": int, "attribution": str}
MAX_DELETE_AFTER_DAYS: Final = 3650
MAX_ATTRIBUTION: Final = 500


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
    obligations: Mapping[str, Any] = field(default_factory=dict)


async def create(
    conn: psycopg.AsyncConnection[Any],
    caller: Caller,
    spec: GrantSpec,
    *,
    min_pool: int,
    detail: Mapping[str, Any] | None = None,
) -> Grant:
    """A grant by its owner (active at once), or a request by a consumer (to be approved);
    `detail` goes into the audit entry beside the purpose.

    Between two organisations a grant is a contract: proposed by the owner service or
    requested by the consumer, it takes effect once the owning organisation's coordinator has
    approved it and the consumer's coordinator has accepted its terms.
    """
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
        consumer_org = await _check_consumer(conn, spec.consumer)
        owner_org = await _owner_org(conn, caller, spec)
        if own:
            await _check_not_onward(conn, spec)
        await check_personal_data(conn, spec, min_pool=min_pool)
        cross = owner_org != consumer_org
        active = own and not cross
        cur = await conn.execute(
            _INSERT,
            (
                spec.owner, spec.consumer, list(spec.device_types), list(spec.metrics),
                None if spec.districts is None else list(spec.districts),
                None if spec.bbox is None else list(spec.bbox),
                spec.granularity, spec.interval_s, spec.pool, spec.min_devices, spec.purpose,
                spec.expires_at, "active" if active else "requested", caller.principal,
                caller.principal if active else None, datetime.now(UTC) if active else None,
                json.dumps(dict(spec.obligations)),
            ),
        )  # fmt: skip
        grant = _grant(await cur.fetchone())
        action = ("grant.propose" if cross else "grant.create") if own else "grant.request"
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
    """The owner approves or refuses a requested grant; between organisations, the owning
    organisation's coordinator approves, and either coordinator or the owner may refuse."""
    async with conn.transaction():
        grant = await _locked(conn, caller, grant_id)
        if grant.cross_org:
            _require_contract_party(caller, grant, approve=approve)
        else:
            _require_owner(caller, grant, "decide on")
        if grant.status != "requested":
            raise ApiError(CONFLICT, "not_requested", f"grant {grant_id} is {grant.status}")
        if not approve:
            grant = await _update(conn, grant_id, "refused", caller.principal, note)
            await audit.record(conn, _event(caller, "grant.refuse", grant, note=note))
            return grant
        if grant.expires_at <= datetime.now(UTC):
            raise ApiError(CONFLICT, "already_expired", f"grant {grant_id} has expired")
        await check_personal_data(conn, _spec(grant), min_pool=min_pool)
        await _check_not_onward(conn, _spec(grant))
        if grant.cross_org:
            if grant.owner_approved_at is not None:
                raise ApiError(CONFLICT, "already_approved", f"grant {grant_id} is approved")
            cur = await conn.execute(
                _SIGN.format(who="owner_approved_by", at="owner_approved_at"),
                (caller.principal, grant_id),
            )
            grant = _grant(await cur.fetchone())
            await audit.record(conn, _event(caller, "grant.approve", grant, note=note))
            return await _take_effect(conn, caller, grant)
        grant = await _update(conn, grant_id, "active", caller.principal, note)
        await audit.record(conn, _event(caller, "grant.approve", grant, note=note))
    return grant


async def accept(
    conn: psycopg.AsyncConnection[Any], caller: Caller, grant_id: int, *, note: str
) -> Grant:
    """The consumer's coordinator accepts a contract's terms (purpose, expiry, granularity,
    districts, obligations, no redistribution); on record with the terms accepted."""
    async with conn.transaction():
        grant = await _locked(conn, caller, grant_id)
        if not (caller.is_coordinator and caller.organisation == grant.consumer_org):
            raise forbidden(
                "not_consumer_coordinator",
                f"the terms of grant {grant_id} are accepted by {grant.consumer_org}'s coordinator",
            )
        if not grant.cross_org:
            raise ApiError(
                CONFLICT, "not_a_contract", f"grant {grant_id} is within {grant.owner_org}"
            )
        if grant.status != "requested" or grant.consumer_accepted_at is not None:
            raise ApiError(CONFLICT, "not_requested", f"grant {grant_id} is {grant.status}")
        cur = await conn.execute(
            _SIGN.format(who="consumer_accepted_by", at="consumer_accepted_at"),
            (caller.principal, grant_id),
        )
        grant = _grant(await cur.fetchone())
        await audit.record(
            conn, _event(caller, "grant.accept", grant, note=note, terms=grant.terms())
        )
        return await _take_effect(conn, caller, grant)


async def _take_effect(conn: psycopg.AsyncConnection[Any], caller: Caller, grant: Grant) -> Grant:
    """A contract both coordinators signed becomes active (in the caller's transaction)."""
    if grant.owner_approved_at is None or grant.consumer_accepted_at is None:
        return grant
    if grant.expires_at <= datetime.now(UTC):
        raise ApiError(CONFLICT, "already_expired", f"grant {grant.id} has expired")
    grant = await _update(conn, grant.id, "active", caller.principal, grant.note)
    await audit.record(conn, _event(caller, "grant.activate", grant))
    return grant


async def revoke(
    conn: psycopg.AsyncConnection[Any], caller: Caller, grant_id: int, *, note: str
) -> Grant:
    """The owner (or either organisation's coordinator) ends a grant now: live delivery and
    history stop."""
    async with conn.transaction():
        grant = await _locked(conn, caller, grant_id)
        coordinator = caller.is_coordinator and caller.organisation in (
            grant.owner_org, grant.consumer_org,
        )  # fmt: skip
        if not coordinator:
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


def check_visible(caller: Caller, grant: Grant) -> None:
    """A 404 for a grant the caller's organisation is no party to (it is not there, as far as
    the caller can tell); a 403 for one of its organisation's it is not a party to."""
    if caller.principal in (grant.owner, grant.consumer):
        return
    if caller.organisation not in (grant.owner_org, grant.consumer_org):
        raise ApiError(NOT_FOUND, "unknown_grant", f"no grant {grant.id}")
    if not caller.is_coordinator:
        raise forbidden("not_party", f"{caller.principal} is not a party to grant {grant.id}")


async def visible_to(
    conn: psycopg.AsyncConnection[Any], caller: Caller, *, status: str | None = None
) -> list[Grant]:
    """Grants the caller owns or holds; a coordinator's, every grant its organisation is a
    party to."""
    cur = await conn.execute(
        _SELECT + " WHERE (owner = %(me)s OR consumer = %(me)s"
        " OR (%(coord)s AND %(org)s IN (owner_org, consumer_org)))"
        " AND (%(st)s::text IS NULL OR status = %(st)s) ORDER BY id",
        {"coord": caller.is_coordinator, "org": caller.organisation, "me": caller.principal,
         "st": status},
    )  # fmt: skip
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


async def pooled_for(
    conn: psycopg.AsyncConnection[Any], caller: Caller, device_type: str, width: timedelta
) -> list[Grant]:
    """The caller's live grants of `device_type` pooled per district at `width`: the grants a
    regional read spans (store/migrations/0061_regional_pools.sql applies the same rule)."""
    cur = await conn.execute(
        _SELECT + " WHERE consumer = %s AND status = 'active' AND expires_at > now()"
        " AND granularity = 'aggregate' AND pool = 'district' AND bbox IS NULL"
        " AND %s = ANY(device_types) AND interval_s = %s ORDER BY id",
        (caller.principal, device_type, int(width.total_seconds())),
    )
    return [_grant(row) for row in await cur.fetchall()]


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
    _check_obligations(spec.obligations)


def _check_obligations(obligations: Mapping[str, Any]) -> None:
    for key, value in obligations.items():
        kind = OBLIGATIONS.get(key)
        if kind is None:
            known = ", ".join(OBLIGATIONS)
            raise ApiError(422, "unknown_obligation", f"unknown obligation {key!r} ({known})")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ApiError(422, "bad_obligation", f"{key} must be {kind.__name__}")
    days = obligations.get("delete_after_days")
    if days is not None and not 1 <= days <= MAX_DELETE_AFTER_DAYS:
        raise ApiError(
            422, "bad_obligation", f"delete_after_days must be 1..{MAX_DELETE_AFTER_DAYS}"
        )
    text = obligations.get("attribution")
    if text is not None and not 0 < len(text.strip()) <= MAX_ATTRIBUTION:
        raise ApiError(422, "bad_obligation", f"attribution must be 1..{MAX_ATTRIBUTION} chars")


async def _check_consumer(conn: psycopg.AsyncConnection[Any], name: str) -> str:
    """The consumer's organisation."""
    cur = await conn.execute("SELECT kind, organisation FROM principals WHERE name = %s", (name,))
    row = await cur.fetchone()
    if row is None or row[0] not in ("service", "team"):
        raise ApiError(422, "unknown_consumer", f"{name!r} is not a registered service or team")
    return str(row[1])


async def _owner_org(conn: psycopg.AsyncConnection[Any], caller: Caller, spec: GrantSpec) -> str:
    """The owner's organisation. Another organisation's service is known to a requester only
    by the streams it offers (docs/organisations.md): otherwise it is not there."""
    cur = await conn.execute(
        "SELECT s.organisation, array(SELECT device_type FROM stream_offers o"
        " WHERE o.service = s.name AND o.withdrawn_at IS NULL)"
        " FROM services s WHERE s.name = %s",
        (spec.owner,),
    )
    row = await cur.fetchone()
    unknown = ApiError(422, "unknown_owner", f"no service {spec.owner!r} offers these streams")
    if row is None:
        raise unknown
    org, offered = str(row[0]), set(row[1])
    if org != caller.organisation and not set(spec.device_types) <= offered:
        raise unknown
    return org


async def _check_not_onward(conn: psycopg.AsyncConnection[Any], spec: GrantSpec) -> None:
    """Data received under a grant is never granted onward: an owner grants only device types
    it has devices of, not ones it merely reads under another's grant."""
    cur = await conn.execute(
        "SELECT t, EXISTS (SELECT 1 FROM devices d WHERE d.service = %(o)s AND d.device_type = t),"
        " array(SELECT g.id FROM grants g WHERE g.consumer = %(o)s AND g.status = 'active'"
        "       AND t = ANY(g.device_types) ORDER BY g.id)"
        " FROM unnest(%(t)s::text[]) AS t",
        {"o": spec.owner, "t": list(spec.device_types)},
    )
    for device_type, owns, received in await cur.fetchall():
        if not owns and received:
            raise forbidden(
                "redistribution_prohibited",
                f"{spec.owner} has no {device_type} devices of its own; the {device_type} data "
                f"it reads under grant {received[0]} may not be granted onward",
            )


def _require_owner(caller: Caller, grant: Grant, verb: str) -> None:
    if caller.service != grant.owner:
        raise forbidden("not_owner", f"only {grant.owner} may {verb} grant {grant.id}")


def _require_contract_party(caller: Caller, grant: Grant, *, approve: bool) -> None:
    owner_coordinator = caller.is_coordinator and caller.organisation == grant.owner_org
    if approve and not owner_coordinator:
        raise forbidden(
            "not_owner_coordinator",
            f"grant {grant.id} crosses organisations: {grant.owner_org}'s coordinator approves it",
        )
    consumer_coordinator = caller.is_coordinator and caller.organisation == grant.consumer_org
    if not (owner_coordinator or consumer_coordinator or caller.service == grant.owner):
        raise forbidden("not_owner", f"only {grant.owner} or a coordinator may refuse {grant.id}")


async def _locked(conn: psycopg.AsyncConnection[Any], caller: Caller, grant_id: int) -> Grant:
    cur = await conn.execute(_SELECT + " WHERE id = %s FOR UPDATE", (grant_id,))
    row = await cur.fetchone()
    if row is None:
        raise ApiError(NOT_FOUND, "unknown_grant", f"no grant {grant_id}")
    grant = _grant(row)
    if caller.organisation not in (grant.owner_org, grant.consumer_org):
        raise ApiError(NOT_FOUND, "unknown_grant", f"no grant {grant_id}")
    return grant


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
        g.interval_s, g.pool, g.min_devices, g.purpose, g.expires_at, g.obligations,
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
