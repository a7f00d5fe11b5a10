"""The InfluxDB mirror against victoria-metrics (InfluxDB 2's write API): all of it, even across
an outage, without ever holding up the main store's writes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from store.mirror import InfluxMirror, MirrorConfig, encode, status
from store.schema import READINGS_TABLES
from store.writer import ReadingsWriter
from tests.store.store_helpers import NOW, city, readings, register, write
from tests.support.victoria import LocalVictoria

Point = tuple[str, str, str, str | None, int, float]
# The outage: victoria-metrics stopped this long while the store keeps writing.
OUTAGE_S = 30.0
# The main writer's pace in the outage test: a batch of 50 messages every 100 ms.
TICK_S = 0.1
PER_TICK = 50


@pytest.fixture
def victoria(service_dir: Path) -> Iterator[LocalVictoria]:
    with LocalVictoria(service_dir / "victoria") as server:
        yield server


def test_line_protocol_is_a_measurement_per_type_with_tags_and_a_bucket_per_service() -> None:
    at = datetime(2026, 11, 26, 6, 0, 0, 123000, tzinfo=UTC)
    rows = [
        (7, at, "air-1", "environment", "Ile Verte, nord", 12.5, None, 30.0, None, None, None),
        (7, at, "air-2", "health", None, None, 1e-05, None, None, None, None),
    ]
    got = encode(READINGS_TABLES["air_sensor"], rows, "silobreak-{service}")
    ns = 1795672800123000000
    assert got == {
        "silobreak-environment": (
            rf"air_sensor,device=air-1,district=Ile\ Verte\,\ nord,service=environment "
            f"pm25=12.5,no2=30.0 {ns}"
        ).encode(),
        "silobreak-health": f"air_sensor,device=air-2,service=health pm10=1e-05 {ns}".encode(),
    }


@pytest.mark.integration
def test_every_reading_reaches_victoria_metrics(
    db_url: str, device_prefix: str, victoria: LocalVictoria
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
    write(db_url, readings(device_prefix, NOW - timedelta(hours=2), 120))
    mirror = InfluxMirror(db_url, MirrorConfig(url=victoria.url, batch_size=100))

    async def twice() -> tuple[int, int]:
        try:
            return await mirror.sync_once(), await mirror.sync_once()
        finally:
            await mirror.close()

    first, second = asyncio.run(twice())
    expected = store_points(db_url)
    with psycopg.connect(db_url) as conn:
        (messages,) = conn.execute(
            "SELECT (SELECT count(*) FROM readings_air_sensor) + (SELECT count(*) FROM"
            " readings_streetlight) + (SELECT count(*) FROM readings_meter)"
        ).fetchone() or (0,)
    assert first == messages  # one point per stored message
    assert second == 0  # nothing committed since: nothing sent again
    assert victoria_points(victoria) == expected
    assert len(expected) > 300


@pytest.mark.integration
@pytest.mark.fault
@pytest.mark.slow
def test_an_outage_neither_holds_up_the_store_nor_loses_a_reading(
    db_url: str, device_prefix: str, victoria: LocalVictoria, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
    with caplog.at_level(logging.WARNING, logger="store.mirror"):
        lags = asyncio.run(_write_through_an_outage(db_url, device_prefix, victoria))
    refused = [r for r in caplog.records if "influx:" in r.getMessage()]
    assert refused, "the mirror never met the outage"
    # The writer kept its pace while victoria-metrics was away: no batch waited on it.
    assert len(lags) >= (OUTAGE_S + 6) / TICK_S * 0.9
    assert max(lags) < 2.0, f"a write fell {max(lags):.1f} s behind its schedule"
    expected = store_points(db_url)
    assert len(expected) >= len(lags) * PER_TICK * 2  # pm25 and no2 of every message
    assert victoria_points(victoria) == expected


async def _write_through_an_outage(
    db_url: str, prefix: str, victoria: LocalVictoria
) -> list[float]:
    """Write at a fixed pace for OUTAGE_S + 6 s, victoria-metrics stopped for OUTAGE_S of it;
    returns how late each batch committed against its schedule."""
    stop_mirror = asyncio.Event()
    mirror = InfluxMirror(db_url, MirrorConfig(url=victoria.url, interval=timedelta(seconds=0.2)))
    mirroring = asyncio.create_task(mirror.run(stop_mirror))
    writer = ReadingsWriter(db_url, name="outage-test")
    lags: list[float] = []
    started = time.monotonic()
    phases = [(3.0, "up"), (3.0 + OUTAGE_S, "down"), (6.0 + OUTAGE_S, "up")]
    tick = 0
    try:
        for until, state in phases:
            if state == "down":
                await asyncio.to_thread(victoria.stop)
            else:
                await asyncio.to_thread(victoria.start)
            while time.monotonic() - started < until:
                due = started + tick * TICK_S
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await writer.write({"air_sensor": _tick_rows(prefix, tick)})
                lags.append(time.monotonic() - due)
                tick += 1
        await _until_caught_up(db_url, mirror)
    finally:
        stop_mirror.set()
        await mirroring
        await writer.close()
    return lags


async def _until_caught_up(db_url: str, mirror: InfluxMirror) -> None:
    deadline = time.monotonic() + 120
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        while True:
            now = await status(conn, mirror.config.name)
            if now is not None and now.behind == 0:
                return
            assert time.monotonic() < deadline, f"mirror still behind: {now}"
            await asyncio.sleep(0.2)


def _tick_rows(prefix: str, tick: int) -> list[tuple[Any, ...]]:
    """PER_TICK messages a millisecond apart, spread over three air sensors."""
    base = NOW - timedelta(hours=1) + timedelta(seconds=tick)
    return [
        (base + timedelta(milliseconds=i), f"{prefix}air-{1 + i % 3}", "environment",
         float(tick % 100), None, i / 4, None, None, None)
        for i in range(PER_TICK)
    ]  # fmt: skip


def store_points(db_url: str) -> set[Point]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT r.device_type || '_' || r.metric, r.device_id, r.service, d.district,"
            " (extract(epoch FROM r.time) * 1000)::bigint, r.value"
            " FROM readings r LEFT JOIN devices d USING (device_id)"
        ).fetchall()
    return {(n, dev, svc, dist, int(ms), float(v)) for n, dev, svc, dist, ms, v in rows}


def victoria_points(victoria: LocalVictoria) -> set[Point]:
    out: set[Point] = set()
    for series in victoria.export():
        labels = series["metric"]
        for ms, value in zip(series["timestamps"], series["values"], strict=True):
            out.add(
                (
                    labels["__name__"],
                    labels["device"],
                    labels["service"],
                    labels.get("district"),
                    int(ms),
                    float(value),
                )
            )
    return out
