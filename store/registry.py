"""The device registry in the database: register, import, list, and snapshots for ingest."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg

from devices.catalog import DEVICE_TYPES
from devices.registry import DeviceRecord, KnownDevice, RegistrySnapshot
from store.device_catalog import adopt_recorded_catalog

logger = logging.getLogger(__name__)

# The first owner's entry starts here and covers all time before any transfer too.
BEGINNING: Final = datetime(1970, 1, 1, tzinfo=UTC)

_UPSERT: Final = """
INSERT INTO devices AS d (device_id, device_type, service, district, lat, lon, medium,
                          installed_at, personal_data, attributes)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[],
                     %s::float8[], %s::text[], %s::timestamptz[], %s::bool[], %s::jsonb[])
ON CONFLICT (device_id) DO UPDATE SET
    device_type = EXCLUDED.device_type, service = EXCLUDED.service,
    district = EXCLUDED.district, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
    medium = EXCLUDED.medium, installed_at = EXCLUDED.installed_at,
    personal_data = EXCLUDED.personal_data, attributes = EXCLUDED.attributes,
    lifecycle = 'active', updated_at = now()
"""
# Ownership history: a new device's first owner from the beginning; a device whose row
# names another service is transferred to it from now on.
_OWNERS: Final = """
INSERT INTO device_ownership (device_id, valid_from, service)
SELECT id, start, svc FROM unnest(%s::text[], %s::timestamptz[], %s::text[]) AS u(id, start, svc)
ON CONFLICT (device_id, valid_from) DO UPDATE SET service = EXCLUDED.service
"""
_SNAPSHOT: Final = """
SELECT d.device_id, d.device_type, d.medium, d.district,
       array_agg(o.valid_from ORDER BY o.valid_from), array_agg(o.service ORDER BY o.valid_from)
FROM devices d JOIN device_ownership o USING (device_id)
WHERE d.lifecycle = 'active'
GROUP BY d.device_id
"""
_VERSION: Final = "SELECT version FROM registry_version"


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device as `silobreak devices list` shows it."""

    device_id: str
    device_type: str
    service: str
    district: str | None
    medium: str | None
    lifecycle: str
    connection: str
    last_seen: datetime | None


def upsert_devices(conn: psycopg.Connection[Any], records: Sequence[DeviceRecord]) -> int:
    """Register or update devices in one transaction; returns how many were new."""
    if not records:
        return 0
    ids = [r.device_id for r in records]
    with conn.transaction():
        owner: dict[str, str] = dict(
            conn.execute(
                "SELECT device_id, service FROM devices WHERE device_id = ANY(%s) FOR UPDATE",
                (ids,),
            ).fetchall()
        )
        now = datetime.now(UTC)
        changed = [r for r in records if owner.get(r.device_id, r.service) != r.service]
        new = [r for r in records if r.device_id not in owner]
        conn.execute(_UPSERT, _columns(records))
        starts = [BEGINNING] * len(new) + [now] * len(changed)
        moved = [*new, *changed]
        if moved:
            conn.execute(
                _OWNERS, ([r.device_id for r in moved], starts, [r.service for r in moved])
            )
    return len(new)


def list_devices(
    conn: psycopg.Connection[Any],
    *,
    service: str | None = None,
    device_type: str | None = None,
    district: str | None = None,
    limit: int = 1000,
) -> list[DeviceRow]:
    rows = conn.execute(
        "SELECT device_id, device_type, service, district, medium, lifecycle, connection,"
        " last_seen FROM devices"
        " WHERE (%(s)s::text IS NULL OR service = %(s)s)"
        " AND (%(t)s::text IS NULL OR device_type = %(t)s)"
        " AND (%(d)s::text IS NULL OR district = %(d)s)"
        " ORDER BY device_id LIMIT %(n)s",
        {"s": service, "t": device_type, "d": district, "n": limit},
    ).fetchall()
    return [DeviceRow(*row) for row in rows]


def count_online(conn: psycopg.Connection[Any]) -> int:
    """How many registered devices are connected to the broker now."""
    row = conn.execute("SELECT count(*) FROM devices WHERE connection = 'online'").fetchone()
    return int(row[0]) if row else 0


async def load_snapshot(conn: psycopg.AsyncConnection[Any]) -> RegistrySnapshot:
    """Every active device with its ownership history, for ingest."""
    version_row = await (await conn.execute(_VERSION)).fetchone()
    rows = await (await conn.execute(_SNAPSHOT)).fetchall()
    if any(row[1] not in DEVICE_TYPES for row in rows):
        # A type migrated since this process started: its devices are being registered.
        await adopt_recorded_catalog(conn)
    return RegistrySnapshot(_known(rows), version=version_row[0] if version_row else None)


async def registry_version(conn: psycopg.AsyncConnection[Any]) -> int:
    row = await (await conn.execute(_VERSION)).fetchone()
    return int(row[0]) if row else 0


def _known(rows: Iterable[tuple[Any, ...]]) -> Iterable[KnownDevice]:
    for device_id, device_type, medium, district, starts, services in rows:
        if device_type not in DEVICE_TYPES:
            logger.warning(
                "device %s: type %s is not in the catalog, skipped", device_id, device_type
            )
            continue
        yield KnownDevice(
            device_id=device_id,
            device_type=DEVICE_TYPES[device_type],
            owners=tuple(zip(starts, services, strict=True)),
            medium=medium,
            district=district,
        )


def _columns(records: Sequence[DeviceRecord]) -> tuple[list[Any], ...]:
    return (
        [r.device_id for r in records],
        [r.device_type for r in records],
        [r.service for r in records],
        [r.district for r in records],
        [r.lat for r in records],
        [r.lon for r in records],
        [r.medium for r in records],
        [r.installed_at for r in records],
        [r.is_personal_data for r in records],
        [json.dumps(dict(r.attributes)) for r in records],
    )
