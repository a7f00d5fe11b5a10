"""A simulated day of the default city in a store: readings, rejects, presence, health figures.

The messages are the simulator's (firmware_sim.messages), validated by ingest's own decode and
written by the production writer; the platform figures by the recorder's own code, fed with
the day's counts every 10 simulated seconds. Grants let the environment service see what the
cross-service dashboard shows.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from devices.registry import KnownDevice, RegistrySnapshot
from firmware_sim import build_fleet, default_scenario, messages, scale_scenario
from ingest.decode import Accepted, Window, decode
from ingest.metrics import IngestMetrics
from silobreak.recorder import Counters, window
from store.platform_stats import record_fleet, record_ingest
from store.registry import upsert_devices
from store.writer import ReadingsWriter, RejectRow, Row

# Big enough for every service to have devices in every district (air sensors are the
# scarcest: 29 of the default city's 3,400 devices).
DEVICES = 700
DAY = timedelta(days=1)
STEP = timedelta(seconds=10)
_BATCH = 20_000


@dataclass(slots=True)
class Day:
    start: datetime
    end: datetime
    messages: int = 0
    rows: int = 0
    rejects: int = 0
    districts: list[str] = field(default_factory=list)


def load_day(url: str, *, end: datetime | None = None, devices: int = DEVICES) -> Day:
    """Store the 24 h before `end` (default: now, rounded down to 10 s)."""
    now = datetime.now(UTC)
    end = end or now.replace(second=now.second - now.second % 10, microsecond=0)
    day = Day(end - DAY, end)
    city = scale_scenario(default_scenario(), devices)
    fleet = build_fleet(city)
    day.districts = [d.name for d in city.districts]
    with psycopg.connect(url, autocommit=True) as conn:
        upsert_devices(conn, fleet.records())
        _backdate_ownership(conn, day.start - DAY)
        snapshot = _snapshot(conn)
    asyncio.run(_write(url, fleet, snapshot, day))
    with psycopg.connect(url, autocommit=True) as conn:
        # Presence as ingest leaves it: most devices online, a few gone quiet.
        conn.execute(
            "UPDATE devices SET connection = CASE WHEN hashtext(device_id) %% 20 = 0"
            " THEN 'offline' ELSE 'online' END, last_seen = %s",
            (day.end,),
        )
    return day


def _backdate_ownership(conn: psycopg.Connection[Any], since: datetime) -> None:
    # Registered "now", owned since before the day: readings carry the owner of their time.
    conn.execute("UPDATE device_ownership SET valid_from = %s", (since,))


def _snapshot(conn: psycopg.Connection[Any]) -> RegistrySnapshot:
    from devices.catalog import DEVICE_TYPES  # noqa: PLC0415

    rows = conn.execute(
        "SELECT d.device_id, d.device_type, d.medium, d.district, o.valid_from, o.service"
        " FROM devices d JOIN device_ownership o USING (device_id)"
    ).fetchall()
    return RegistrySnapshot(
        KnownDevice(dev, DEVICE_TYPES[dtype], ((since, svc),), medium, district)
        for dev, dtype, medium, district, since, svc in rows
    )


async def _write(url: str, fleet: Any, snapshot: RegistrySnapshot, day: Day) -> None:
    writer = ReadingsWriter(url, name="city-day")
    metrics = IngestMetrics()
    before = Counters.read(metrics.registry)
    slot_end = day.start + STEP
    rows: dict[str, list[Row]] = defaultdict(list)
    rejects: list[RejectRow] = []
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        # One transaction for the day's ~26,000 figures: a commit each would take a minute.
        try:
            for msg in _telemetry(fleet, day):
                while msg.time >= slot_end:
                    after = Counters.read(metrics.registry)
                    await record_ingest(
                        conn, window(before, after, source="ingest:city-day", at=slot_end,
                                     span=STEP)
                    )  # fmt: skip
                    await _deliver(conn, slot_end)
                    await record_fleet(conn, at=slot_end, window=STEP)
                    before, slot_end = after, slot_end + STEP
                _decode_one(msg, snapshot, rows, rejects, metrics, day)
                metrics.pending.set(sum(map(len, rows.values())) + len(rejects))
                if sum(map(len, rows.values())) >= _BATCH:
                    await _flush(writer, rows, rejects, day, metrics)
            await _flush(writer, rows, rejects, day, metrics)
        finally:
            await writer.close()


async def _deliver(conn: psycopg.AsyncConnection[Any], at: datetime) -> None:
    # A subscription's delivery batch every minute, as a streams gateway records it.
    if at.second == 0:
        await conn.execute(
            "INSERT INTO audit_log (at, actor, action, owner, consumer, readings)"
            " VALUES (%s, 'streams', 'delivery.batch', 'mobility', 'environment', %s)",
            (at, 40 + at.minute),
        )


def _telemetry(fleet: Any, day: Day) -> Iterator[Any]:
    for msg in messages(fleet, day.start, day.end):
        if msg.topic.endswith("/telemetry"):
            yield msg


def _decode_one(
    msg: Any,
    snapshot: RegistrySnapshot,
    rows: dict[str, list[Row]],
    rejects: list[RejectRow],
    metrics: IngestMetrics,
    day: Day,
) -> None:
    day.messages += 1
    metrics.received.inc()
    # The accepted window as ingest had it when the message arrived.
    result = decode(
        msg.topic, msg.payload, snapshot,
        Window.at(msg.time, max_age=timedelta(days=7), max_future=timedelta(minutes=5)),
        max_payload=64 * 1024,
    )  # fmt: skip
    if isinstance(result, Accepted):
        rows[result.device_type].extend(result.rows)
        metrics.stored.inc()
        return
    metrics.rejected.labels(result.reason).inc()
    rejects.append(
        RejectRow(msg.time, msg.topic, result.device_id, result.reason, result.detail, msg.payload)
    )


async def _flush(
    writer: ReadingsWriter,
    rows: dict[str, list[Row]],
    rejects: list[RejectRow],
    day: Day,
    metrics: IngestMetrics,
) -> None:
    if not rows and not rejects:
        return
    with metrics.batch_seconds.time():
        result = await writer.write(dict(rows), rejects)
    metrics.store_up.set(1)
    metrics.pending.set(0)
    day.rows += result.stored
    day.rejects += result.rejects
    rows.clear()
    rejects.clear()


def grant(
    conn: psycopg.Connection[Any],
    owner: str,
    consumer: str,
    device_types: list[str],
    *,
    metrics: list[str] | None = None,
    districts: list[str] | None = None,
    granularity: str = "raw",
    interval_s: int | None = None,
    pool: str | None = None,
    expires_at: datetime | None = None,
) -> int:
    """An active grant as streams.grants stores one; returns its id. Between two
    organisations, as a contract both coordinators have signed."""
    row = conn.execute(
        "INSERT INTO grants (owner, consumer, device_types, metrics, districts, granularity,"
        " interval_s, pool, purpose, expires_at, status, created_by, owner_approved_by,"
        " owner_approved_at, consumer_accepted_by, consumer_accepted_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'test', %s, 'active', %s,"
        " 'test', now(), 'test', now()) RETURNING id",
        (
            owner, consumer, device_types, metrics or [], districts, granularity, interval_s,
            pool, expires_at or datetime.now(UTC) + timedelta(days=30), owner,
        ),
    ).fetchone()  # fmt: skip
    assert row is not None
    return int(row[0])
