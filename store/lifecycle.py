"""Device lifecycle in the registry: register with credentials, find, transfer, decommission,
erase, rotate and revoke; and the broker accounts all of that adds up to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from devices.broker_auth import COORDINATOR, SERVICE, BrokerAuth, PrincipalAccount
from devices.credentials import broker_hash, new_secret
from devices.registry import DeviceRecord
from devices.topics import SERVICE_RE
from store import audit
from store.errors import StoreError
from store.organisations import claim_devices, resolve_organisation
from store.registry import BEGINNING, upsert_devices
from store.schema import READINGS_TABLES

LIFECYCLES: Final = ("active", "decommissioned")
CONNECTIONS: Final = ("online", "offline")
# A device's clock may run a little ahead of ours; a transfer dated that far ahead is a typo.
_FUTURE_TOLERANCE: Final = timedelta(seconds=5)

_ISSUE: Final = """
INSERT INTO device_credentials AS c (device_id, broker_hash)
SELECT * FROM unnest(%s::text[], %s::text[])
ON CONFLICT (device_id) DO UPDATE
    SET broker_hash = EXCLUDED.broker_hash, issued_at = now(), revoked_at = NULL
"""
_FIND: Final = """
SELECT d.device_id, d.device_type, d.service, d.district, d.lat, d.lon, d.medium,
       d.installed_at, d.lifecycle, d.connection, d.last_seen,
       CASE WHEN c.device_id IS NULL THEN 'none'
            WHEN c.revoked_at IS NULL THEN 'active' ELSE 'revoked' END
FROM devices d LEFT JOIN device_credentials c USING (device_id)
WHERE (%(id)s::text IS NULL OR d.device_id = %(id)s)
  AND (%(service)s::text IS NULL OR d.service = %(service)s)
  AND (%(org)s::text IS NULL
       OR d.service IN (SELECT name FROM services WHERE organisation = %(org)s))
  AND (%(type)s::text IS NULL OR d.device_type = %(type)s)
  AND (%(district)s::text IS NULL OR d.district = %(district)s)
  AND (%(lifecycle)s::text IS NULL OR d.lifecycle = %(lifecycle)s)
  AND (%(connection)s::text IS NULL OR d.connection = %(connection)s)
  AND (%(seen_since)s::timestamptz IS NULL OR d.last_seen >= %(seen_since)s)
  AND (%(unseen_since)s::timestamptz IS NULL
       OR d.last_seen IS NULL OR d.last_seen < %(unseen_since)s)
  AND (%(after)s::text IS NULL OR d.device_id > %(after)s)
ORDER BY d.device_id
LIMIT %(limit)s
"""


class LifecycleError(StoreError):
    """A lifecycle action that cannot be done: an unknown device, a bad date, ..."""


@dataclass(frozen=True, slots=True)
class Registration:
    """What a register or import did; `secrets` holds the new devices' secrets (shown once)."""

    new: int
    updated: int
    secrets: dict[str, str]


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    service: str | None = None
    device_type: str | None = None
    district: str | None = None
    lifecycle: str | None = None
    connection: str | None = None
    seen_since: datetime | None = None  # last seen at or after
    unseen_since: datetime | None = None  # not seen since (or never)
    after: str | None = None  # keyset paging: device ids after this one
    limit: int = 1000
    device_id: str | None = None
    organisation: str | None = None  # only the devices of this organisation's services

    def params(self) -> dict[str, Any]:
        return {
            "id": self.device_id,
            "org": self.organisation,
            "service": self.service,
            "type": self.device_type,
            "district": self.district,
            "lifecycle": self.lifecycle,
            "connection": self.connection,
            "seen_since": self.seen_since,
            "unseen_since": self.unseen_since,
            "after": self.after,
            "limit": self.limit,
        }


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    device_type: str
    service: str
    district: str | None
    lat: float | None
    lon: float | None
    medium: str | None
    installed_at: datetime | None
    lifecycle: str
    connection: str
    last_seen: datetime | None
    credential: str  # active, revoked or none


@dataclass(frozen=True, slots=True)
class Transfer:
    device_id: str
    old_service: str
    new_service: str
    effective_at: datetime
    retagged: int  # stored readings timed at or after effective_at, now carrying the new owner


def register_devices(
    conn: psycopg.Connection[Any],
    records: Sequence[DeviceRecord],
    *,
    actor: str,
    deliver: Callable[[dict[str, str]], None] | None = None,
    organisation: str | None = None,
) -> Registration:
    """Register or update devices and give a secret to each one that has no live credential.

    One transaction for the whole batch. `deliver(secrets)` runs before the commit: when it
    raises (the secrets file cannot be written), nothing is registered. The devices are
    `organisation`'s (the only one's when None and there is one): a line naming another
    organisation's service or device id refuses the whole batch.
    """
    ids = [r.device_id for r in records]
    with conn.transaction():
        claim_devices(conn, records, resolve_organisation(conn, organisation))
        live = {
            row[0]
            for row in conn.execute(
                "SELECT device_id FROM device_credentials"
                " WHERE device_id = ANY(%s) AND revoked_at IS NULL",
                (ids,),
            )
        }
        needing = [i for i in ids if i not in live]
        secrets = {i: new_secret() for i in needing}
        # Hashed before the upsert locks the rows: ~60 µs each, 0.6 s for 10,000 devices that
        # ingest's presence updates would otherwise wait behind.
        hashes = [broker_hash(secrets[i]) for i in needing]
        new = upsert_devices(conn, records)
        conn.execute(_ISSUE, (needing, hashes))
        audit.record(conn, actor, "device.register", needing, {"credential": "issued"})
        if deliver is not None:
            deliver(secrets)
    return Registration(new=new, updated=len(records) - new, secrets=secrets)


def find_devices(conn: psycopg.Connection[Any], where: DeviceFilter) -> list[DeviceInfo]:
    return [DeviceInfo(*row) for row in conn.execute(_FIND, where.params()).fetchall()]


async def find_devices_async(
    conn: psycopg.AsyncConnection[Any], where: DeviceFilter
) -> list[DeviceInfo]:
    cur = await conn.execute(_FIND, where.params())
    return [DeviceInfo(*row) for row in await cur.fetchall()]


def decommission(
    conn: psycopg.Connection[Any], device_ids: Sequence[str], *, actor: str, reason: str = ""
) -> int:
    """Retire devices: their credentials are revoked and ingest stops accepting their data.

    Returns how many were active; unknown ids raise and change nothing.
    """
    with conn.transaction():
        _require_known(conn, device_ids)
        changed = conn.execute(
            "UPDATE devices SET lifecycle = 'decommissioned', connection = 'offline',"
            " updated_at = now() WHERE device_id = ANY(%s) AND lifecycle = 'active'",
            (list(device_ids),),
        ).rowcount
        conn.execute(
            "UPDATE device_credentials SET revoked_at = now()"
            " WHERE device_id = ANY(%s) AND revoked_at IS NULL",
            (list(device_ids),),
        )
        audit.record(conn, actor, "device.decommission", device_ids, {"reason": reason})
    return changed


def revoke_secrets(conn: psycopg.Connection[Any], device_ids: Sequence[str], *, actor: str) -> int:
    """Revoke the devices' credentials (they stay registered); returns how many were live."""
    with conn.transaction():
        _require_known(conn, device_ids)
        revoked = conn.execute(
            "UPDATE device_credentials SET revoked_at = now()"
            " WHERE device_id = ANY(%s) AND revoked_at IS NULL",
            (list(device_ids),),
        ).rowcount
        audit.record(conn, actor, "credential.revoke", device_ids)
    return revoked


def rotate_secret(conn: psycopg.Connection[Any], device_id: str, *, actor: str) -> str:
    """A new secret for an active device; the old one stops working at the broker sync."""
    secret = new_secret()
    with conn.transaction():
        row = conn.execute(
            "SELECT lifecycle FROM devices WHERE device_id = %s FOR UPDATE", (device_id,)
        ).fetchone()
        if row is None:
            raise LifecycleError(f"no device {device_id!r} in the registry")
        if row[0] != "active":
            raise LifecycleError(f"device {device_id!r} is {row[0]}; register it again first")
        conn.execute(_ISSUE, ([device_id], [broker_hash(secret)]))
        audit.record(conn, actor, "credential.rotate", device_id)
    return secret


def transfer(
    conn: psycopg.Connection[Any],
    device_id: str,
    service: str,
    effective_at: datetime | None = None,
    *,
    actor: str,
) -> Transfer:
    """Hand a device to another service from `effective_at` (default now) on.

    The ownership history only grows: `effective_at` must be after the device's last change
    of owner and not in the future. Readings already stored for times from `effective_at` on
    are re-tagged with the new owner in the same transaction.
    """
    if SERVICE_RE.fullmatch(service) is None:
        raise LifecycleError(f"service {service!r} must match [a-z][a-z0-9_-]*")
    now = datetime.now(UTC)
    at = effective_at or now
    if at.tzinfo is None:
        raise LifecycleError("the transfer time needs a UTC offset")
    if at > now + _FUTURE_TOLERANCE:
        raise LifecycleError(f"transfer time {at.isoformat()} is in the future")
    with conn.transaction():
        row = conn.execute(
            "SELECT service, device_type, lifecycle FROM devices WHERE device_id = %s FOR UPDATE",
            (device_id,),
        ).fetchone()
        if row is None:
            raise LifecycleError(f"no device {device_id!r} in the registry")
        old, device_type, lifecycle = row
        last = conn.execute(
            "SELECT max(valid_from) FROM device_ownership WHERE device_id = %s", (device_id,)
        ).fetchone()
        last_change: datetime = last[0] if last and last[0] is not None else BEGINNING
        if lifecycle != "active":
            raise LifecycleError(f"device {device_id!r} is {lifecycle}")
        if old == service:
            raise LifecycleError(f"device {device_id!r} already belongs to {service}")
        if at <= last_change:
            raise LifecycleError(
                f"device {device_id!r} last changed owner at {last_change.isoformat()}; "
                "a transfer must come after it"
            )
        conn.execute(
            "INSERT INTO device_ownership (device_id, valid_from, service) VALUES (%s, %s, %s)",
            (device_id, at, service),
        )
        conn.execute(
            "UPDATE devices SET service = %s, updated_at = now() WHERE device_id = %s",
            (service, device_id),
        )
        retagged = retag_readings(conn, device_id, device_type, service, since=at)
        audit.record(
            conn,
            actor,
            "device.transfer",
            device_id,
            {"from": old, "to": service, "effective_at": at, "retagged": retagged},
        )
    return Transfer(device_id, old, service, at, retagged)


def ownership_history(conn: psycopg.Connection[Any], device_id: str) -> list[tuple[datetime, str]]:
    """The device's owning services, each from the time it took over, oldest first."""
    rows = conn.execute(
        "SELECT valid_from, service FROM device_ownership WHERE device_id = %s ORDER BY valid_from",
        (device_id,),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def retag_readings(
    conn: psycopg.Connection[Any],
    device_id: str,
    device_type: str,
    service: str,
    *,
    since: datetime,
) -> int:
    """Tag the device's readings timed at or after `since` with `service`; returns how many
    changed. Run again once every ingestor has reloaded the registry (see `transfer`)."""
    table = sql.Identifier(READINGS_TABLES[device_type].name)
    query = sql.SQL(
        "UPDATE {} SET service = %s WHERE device_id = %s AND time >= %s AND service <> %s"
    ).format(table)
    return conn.execute(query, (service, device_id, since, service)).rowcount


def erase_readings(
    conn: psycopg.Connection[Any],
    device_id: str,
    *,
    reason: str,
    actor: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[int, int]:
    """Delete a device's readings (and its dead letters, whose payloads hold the same data)
    in [since, until); returns (readings, rejects) deleted. Audited with the reason."""
    if not reason.strip():
        raise LifecycleError("an erasure needs a reason (e.g. the request's reference)")
    with conn.transaction():
        row = conn.execute(
            "SELECT device_type FROM devices WHERE device_id = %s FOR UPDATE", (device_id,)
        ).fetchone()
        if row is None:
            raise LifecycleError(f"no device {device_id!r} in the registry")
        table = sql.Identifier(READINGS_TABLES[row[0]].name)
        span = {"d": device_id, "s": since, "u": until}
        readings = conn.execute(
            sql.SQL(
                "DELETE FROM {} WHERE device_id = %(d)s"
                " AND (%(s)s::timestamptz IS NULL OR time >= %(s)s)"
                " AND (%(u)s::timestamptz IS NULL OR time < %(u)s)"
            ).format(table),
            span,
        ).rowcount
        rejects = conn.execute(
            "DELETE FROM rejected_messages WHERE device_id = %(d)s"
            " AND (%(s)s::timestamptz IS NULL OR received_at >= %(s)s)"
            " AND (%(u)s::timestamptz IS NULL OR received_at < %(u)s)",
            span,
        ).rowcount
        audit.record(
            conn,
            actor,
            "device.erase",
            device_id,
            {"reason": reason, "since": since, "until": until, "readings": readings,
             "rejects": rejects},
        )  # fmt: skip
    return readings, rejects


def load_broker_auth(conn: psycopg.Connection[Any]) -> BrokerAuth:
    """The broker accounts the registry holds now: active devices with a live credential,
    and every enabled principal (a service with the devices it owns)."""
    devices = conn.execute(
        "SELECT c.device_id, c.broker_hash FROM device_credentials c"
        " JOIN devices d USING (device_id)"
        " WHERE c.revoked_at IS NULL AND d.lifecycle = 'active' ORDER BY c.device_id"
    ).fetchall()
    owned: dict[str, list[str]] = {}
    in_org: dict[str, list[str]] = {}
    for device_id, service, org in conn.execute(
        "SELECT d.device_id, d.service, s.organisation FROM devices d"
        " JOIN services s ON s.name = d.service"
        " WHERE d.lifecycle = 'active' ORDER BY d.device_id"
    ):
        owned.setdefault(service, []).append(device_id)
        in_org.setdefault(org, []).append(device_id)
    # A service's devices are the ones it owns; a coordinator's, its organisation's.
    principals = []
    for name, kind, hash_, org in conn.execute(
        "SELECT name, kind, broker_hash, organisation FROM principals"
        " WHERE disabled_at IS NULL AND broker_hash IS NOT NULL ORDER BY kind, name"
    ):
        mine = owned if kind == SERVICE else in_org if kind == COORDINATOR else {}
        principals.append(
            PrincipalAccount(name, kind, hash_, mine.get(name if kind == SERVICE else org, []))
        )
    return BrokerAuth(devices=[(d, h) for d, h in devices], principals=principals)


def _require_known(conn: psycopg.Connection[Any], device_ids: Sequence[str]) -> None:
    known = {
        row[0]
        for row in conn.execute(
            "SELECT device_id FROM devices WHERE device_id = ANY(%s) FOR UPDATE",
            (list(device_ids),),
        )
    }
    unknown = [d for d in device_ids if d not in known]
    if unknown:
        shown = ", ".join(unknown[:10]) + (
            f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""
        )
        raise LifecycleError(f"not in the registry: {shown}; nothing changed")
