"""`silobreak bench fanout`: 50 subscriptions over a 5,000 readings/s flow, latency from commit.

Runs on a PostgreSQL of its own with `track_commit_timestamp` on. A writer process commits
air-sensor rows every 100 ms (as ingest's batches do); the hub of a streams gateway feeds
`subscriptions` feeds, each granted one district (a slice of the flow). Latency is the time a
reading is handed to its feed's consumer minus its row's commit time. The baseline is what a
team writes first: one poller per subscription querying by reading time every poll interval.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from devices.registry import new_record
from silobreak.bench.machine import describe_machine
from silobreak.bench.servers import bench_database
from store.registry import upsert_devices
from store.writer import ReadingsWriter
from streams.cursor import Live
from streams.live import Feed, Hub
from streams.pool import new_pool
from streams.scope import Grant, narrow

PREFIX: Final = "fan-"
# Ingest commits a batch every 100 ms at this rate (its batch interval): the same here.
_COMMIT_EVERY_S: Final = 0.1
_POLL: Final = timedelta(milliseconds=250)


@dataclass(frozen=True, slots=True)
class Result:
    system: str
    subscriptions: int
    rate: float
    seconds: float
    delivered: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float  # of the delivering process during the run


def markdown(results: list[Result]) -> str:
    head = f"Machine: {describe_machine()}; PostgreSQL, writer and gateway on the same machine."
    lines = [
        head,
        "",
        (
            "| system | subscriptions | readings/s | delivered / expected | p50 | p99 | max"
            " | delivering CPU |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.system} | {r.subscriptions} | {r.rate:,.0f} | {r.delivered:,} / {r.expected:,} "
        f"| {r.p50_ms:.0f} ms | {r.p99_ms:.0f} ms | {r.max_ms:.0f} ms "
        f"| {r.cpu_s / r.seconds * 100:.0f}% of a core |"
        for r in results
    ]
    return "\n".join(lines)


def run_fanout_bench(
    *,
    subscriptions: int = 50,
    rate: float = 5000.0,
    seconds: float = 20.0,
    devices: int = 1000,
    baseline: bool = True,
    log: Callable[[str], None] = print,
) -> list[Result]:
    """Measure the hub, then the baseline, on the same database and flow."""
    results = []
    with bench_database("fanout", commit_timestamps=True) as db_url:
        _register(db_url, devices, subscriptions)
        systems = ["silobreak", "baseline"] if baseline else ["silobreak"]
        for system in systems:
            result = asyncio.run(_run(system, db_url, subscriptions, rate, seconds))
            log(f"{system}: p50 {result.p50_ms:.0f} ms, p99 {result.p99_ms:.0f} ms, "
                f"{result.delivered}/{result.expected} delivered")  # fmt: skip
            results.append(result)
    return results


def _register(db_url: str, devices: int, districts: int) -> None:
    records = [
        new_record(f"{PREFIX}{d:05d}", "air_sensor", district=f"d{d % districts:02d}")
        for d in range(devices)
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_devices(conn, records)


def _grant(i: int) -> Grant:
    now = datetime.now(UTC)
    return Grant(
        i + 1, "environment", "bench", ("air_sensor",), ("pm25",), (f"d{i:02d}",), None, "raw",
        None, None, None, "bench", now + timedelta(days=1), "active", "bench", now, None, None, "",
    )  # fmt: skip


async def _run(system: str, db_url: str, subs: int, rate: float, seconds: float) -> Result:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("TRUNCATE readings_air_sensor, grants CASCADE")
        for i in range(subs):
            g = _grant(i)
            conn.execute(
                "INSERT INTO grants (id, owner, consumer, device_types, metrics, districts,"
                " granularity, purpose, expires_at, status, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, 'raw', 'bench', %s, 'active', 'bench')",
                (g.id, g.owner, g.consumer, list(g.device_types), list(g.metrics),
                 list(g.districts or ()), g.expires_at),
            )  # fmt: skip
        start_snap = str(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])  # type: ignore[index]
    received: list[tuple[float, str, datetime]] = []
    stop = asyncio.Event()
    cpu0 = time.process_time()
    if system == "silobreak":
        consumers = await _hub_consumers(db_url, subs, start_snap, received, stop)
    else:
        consumers = [asyncio.create_task(_naive(db_url, i, received, stop)) for i in range(subs)]
    await asyncio.sleep(1.0)  # every consumer is polling before the flow starts
    writer = multiprocessing.get_context("spawn").Process(
        target=_writer, args=(db_url, rate, seconds)
    )
    writer.start()
    await asyncio.to_thread(writer.join)
    await asyncio.sleep(2.0)  # the last commits reach their consumers
    stop.set()
    await asyncio.gather(*consumers, return_exceptions=True)
    cpu = time.process_time() - cpu0
    return _measure(system, db_url, subs, rate, seconds, received, cpu)


async def _hub_consumers(
    db_url: str, subs: int, start: str, received: list[tuple[float, str, datetime]],
    stop: asyncio.Event,
) -> list[asyncio.Task[Any]]:  # fmt: skip
    pool = new_pool(db_url)
    await pool.open(wait=True)
    hub = Hub(db_url, pool=pool, poll_interval=_POLL, min_pool=5)

    async def consume(feed: Feed) -> None:
        async for batch in feed.batches():
            at = time.time()
            received.extend((at, r["device_id"], r["time"]) for r in batch.readings)

    tasks: list[asyncio.Task[Any]] = [asyncio.create_task(hub.run(stop))]
    for i in range(subs):
        g = _grant(i)
        feed = Feed(hub, g, [narrow(g, "air_sensor")], Live(start), name=f"b{i}")
        tasks.append(asyncio.create_task(consume(feed)))

    async def cancel_on_stop() -> None:
        await stop.wait()
        for t in tasks[1:]:
            t.cancel()
        await pool.close()

    tasks.append(asyncio.create_task(cancel_on_stop()))
    return tasks


async def _naive(
    db_url: str, i: int, received: list[tuple[float, str, datetime]], stop: asyncio.Event
) -> None:
    """One poller per subscription, by reading time: what a first version does."""
    last = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        while not stop.is_set():
            cur = await conn.execute(
                "SELECT r.time, r.device_id, r.pm25 FROM readings_air_sensor r"
                " JOIN devices d USING (device_id) WHERE d.district = %s AND r.time > %s"
                " ORDER BY r.time",
                (f"d{i:02d}", last),
            )
            rows = await cur.fetchall()
            at = time.time()
            received.extend((at, r[1], r[0]) for r in rows)
            if rows:
                last = rows[-1][0]
            await asyncio.sleep(_POLL.total_seconds())


def _writer(db_url: str, rate: float, seconds: float) -> None:
    """Commit `rate` rows a second for `seconds`, one transaction every 100 ms (plus one late)."""

    async def go() -> None:
        writer = ReadingsWriter(db_url, name="bench-writer")
        per_commit = int(rate * _COMMIT_EVERY_S)
        devices = [f"{PREFIX}{d:05d}" for d in range(1000)]
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < seconds:
            now = datetime.now(UTC)
            rows = [
                (now - timedelta(microseconds=k), devices[(n + k) % len(devices)], "environment",
                 float(k % 50), 9.5, 30.0, 60.0, None, None)
                for k in range(per_commit)
            ]  # fmt: skip
            # One late reading per commit (timed 30 s back, as a device reconnecting sends):
            # a cursor on reading time never sees it.
            rows.append((now - timedelta(seconds=30), devices[n % len(devices)], "environment",
                         1.0, 9.5, 30.0, 60.0, None, None))  # fmt: skip
            await writer.write({"air_sensor": rows})
            n += per_commit
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await writer.close()

    asyncio.run(go())


def _measure(
    system: str, db_url: str, subs: int, rate: float, seconds: float,
    received: list[tuple[float, str, datetime]], cpu: float,
) -> Result:  # fmt: skip
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, time, extract(epoch FROM pg_xact_commit_timestamp(xmin))"
            " FROM readings_air_sensor"
        ).fetchall()
    committed = {(d, t): float(c) for d, t, c in rows}
    latencies = sorted(
        (at - committed[(d, t)]) * 1000 for at, d, t in received if (d, t) in committed
    )
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return Result(
        system, subs, rate, seconds, len(received), len(rows),
        q[49], q[98], latencies[-1] if latencies else 0.0, cpu,
    )  # fmt: skip
