"""`silobreak bench store`: bulk-load a simulated past, then time raw against aggregate reads.

Runs on its own PostgreSQL 15 (plain backend: no native TimescaleDB exists on these machines;
the PGlite TimescaleDB is for correctness, not speed). Each query runs alternately from raw
rows and from the aggregates, and the medians are quoted.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from silobreak.backfill import BackfillReport, SimulatedCity, backfill_simulated
from silobreak.bench.machine import describe_machine
from silobreak.bench.servers import bench_database
from store.maintain import refresh_rollups
from store.query import LevelName, pooled_compute
from store.read import LevelChoice, Selection
from store.reader import StoreReader, release
from store.schema import READINGS_TABLES
from store.writer import ReadingsWriter

# The chart the issue names: 30 days at a 1-hour step, of one streetlight's power and of a
# district's streetlights pooled (streetlights are the most numerous type in the city).
DEVICE_TYPE: Final = "streetlight"
METRIC: Final = "power_w"
STEP: Final = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class QueryTiming:
    chart: str
    source: str  # "raw" or "aggregate"
    rows: int
    seconds: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000


@dataclass(slots=True)
class StoreBenchReport:
    devices: int
    days: int
    interval: timedelta
    load: BackfillReport = field(default_factory=BackfillReport)
    refresh_seconds: float = 0.0
    round_refresh: list[float] = field(default_factory=list)  # after one message per device
    sizes: dict[str, int] = field(default_factory=dict)
    timings: list[QueryTiming] = field(default_factory=list)

    def markdown(self) -> str:
        load = self.load
        lines = [
            (f"Machine: {describe_machine()}; PostgreSQL (plain backend) on the same machine."),
            (
                f"Data: {self.devices:,} simulated devices, {self.days} days, one message every "
                f"{self.interval} per device ({load.messages:,} messages)."
            ),
            "",
            "| bulk load | value |",
            "|---|---|",
            (
                f"| messages | {load.messages:,} ({load.stored:,} rows stored, "
                f"{sum(load.rejected.values()):,} rejected by validation) |"
            ),
            f"| simulate + validate + store | {load.seconds:,.1f} s: **{load.rate:,.0f} msg/s** |",
            (
                f"| of which waiting on the store's COPY | {load.write_seconds:,.1f} s "
                f"({load.stored / load.write_seconds if load.write_seconds else 0:,.0f} rows/s) |"
            ),
            f"| rollup refresh of everything loaded | {self.refresh_seconds:,.1f} s |",
            (
                f"| rollup refresh after one round of the fleet ({self.devices:,} messages), "
                f"median of {len(self.round_refresh)} | "
                f"{statistics.median(self.round_refresh or [0]) * 1000:,.0f} ms |"
            ),
            "",
            f"| chart ({self.days} days, 1-hour step) | source | rows | median | runs (ms) |",
            "|---|---|---|---|---|",
        ]
        for t in self.timings:
            runs = ", ".join(f"{s * 1000:.1f}" for s in t.seconds)
            lines.append(f"| {t.chart} | {t.source} | {t.rows} | {t.median_ms:,.1f} ms | {runs} |")
        lines += ["", "| relation | size |", "|---|---|"]
        lines += [f"| {name} | {size / 2**20:,.0f} MB |" for name, size in self.sizes.items()]
        return "\n".join(lines)


def run_store_bench(
    *,
    devices: int = 1000,
    days: int = 30,
    interval: timedelta = timedelta(minutes=5),
    runs: int = 7,
    jobs: int = 1,
    log: Callable[[str], None] = print,
) -> StoreBenchReport:
    report = StoreBenchReport(devices, days, interval)
    # The plain backend's rollups, sizes and charts, whatever the server: its baseline is
    # theirs (a TimescaleDB server has the extension, but the rollups are what this measures).
    with bench_database("store", backend="plain") as url:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        start = end - timedelta(days=days)
        city = SimulatedCity(devices=devices, interval=interval)
        log(f"loading {days} days of {devices} devices ...")
        report.load = backfill_simulated(url, city, start, end, jobs=jobs, refresh=False)
        log(f"loaded {report.load.messages:,} messages in {report.load.seconds:.0f} s")
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            refresh_rollups(conn)
            report.refresh_seconds = time.perf_counter() - started
            log(f"rollups refreshed in {report.refresh_seconds:.0f} s")
            conn.execute("VACUUM ANALYZE")
            report.sizes = _sizes(conn)
            report.timings = _time_charts(conn, city, start, end, runs, log)
            report.round_refresh = _time_rounds(conn, url, runs)
            log(f"refresh after a round: {statistics.median(report.round_refresh) * 1000:.0f} ms")
    return report


def _time_rounds(conn: psycopg.Connection[Any], url: str, runs: int) -> list[float]:
    """The steady state: one message from every device, then the rollup refresh it causes."""
    devices = conn.execute("SELECT device_id, device_type, service FROM devices").fetchall()
    seconds = []
    for i in range(runs):
        at = datetime.now(UTC) + timedelta(seconds=i)
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for device_id, device_type, service in devices:
            width = len(READINGS_TABLES[device_type].metric_columns)
            rows.setdefault(device_type, []).append((at, device_id, service, *[1] * width))
        asyncio.run(_write(url, rows))
        started = time.perf_counter()
        refresh_rollups(conn)
        seconds.append(time.perf_counter() - started)
    return seconds


async def _write(url: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    writer = ReadingsWriter(url, name="bench")
    try:
        await writer.write(rows)
    finally:
        await writer.close()


def _time_charts(
    conn: psycopg.Connection[Any],
    city: SimulatedCity,
    start: datetime,
    end: datetime,
    runs: int,
    log: Callable[[str], None],
) -> list[QueryTiming]:
    fleet = city.fleet()
    lamps = [d.record for d in fleet.devices if d.device_type == DEVICE_TYPE]
    device = lamps[0].device_id
    district = lamps[0].district
    reader = StoreReader(conn)
    one = Selection(DEVICE_TYPE, (METRIC,), (device,))
    pool = Selection(DEVICE_TYPE, (METRIC,), district=district)
    pooled = pool.scope(pool="district", step=STEP)

    def computed(level: LevelName) -> Callable[[], list[tuple[Any, ...]]]:
        # The district's pools computed at read time from one level: the pooled read before
        # the ledger of released buckets (per-device rows summed per district).
        query, params = pooled_compute(
            DEVICE_TYPE, STEP, start, end, level=level, districts=[district or ""]
        )

        def read() -> list[tuple[Any, ...]]:
            rows = conn.execute(query, params).fetchall()
            return [(r[0], r[5]) for r in rows if r[2] == district and r[3] == METRIC]

        return read

    def released() -> list[tuple[Any, ...]]:
        return [
            (b.bucket, b.count) for b in reader.buckets(pool, start, end, STEP, pool="district")
        ]

    def device_chart(level: LevelChoice) -> Callable[[], list[tuple[Any, ...]]]:
        return lambda: [
            (b.bucket, b.count) for b in reader.buckets(one, start, end, STEP, level=level)
        ]

    started = time.perf_counter()
    release(conn, pooled, start, end)
    log(
        f"released {days(start, end)} days of hourly pools in {time.perf_counter() - started:.1f} s"
    )
    size = sum(1 for r in lamps if r.district == district)
    charts: list[tuple[str, list[tuple[str, Callable[[], list[tuple[Any, ...]]]]]]] = [
        (
            f"one device ({device})",
            [("raw rows", device_chart("raw")), ("1-hour aggregate", device_chart("auto"))],
        ),
        (
            f"one district ({district}, {size} streetlights pooled)",
            [
                ("raw rows", computed("raw")),
                ("1-hour aggregate", computed("1h")),
                ("released pools", released),
            ],
        ),
    ]
    out = []
    for chart, sources in charts:
        seconds: dict[str, list[float]] = {name: [] for name, _ in sources}
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for _ in range(runs + 1):  # the first round warms the cache and is not counted
            for name, read in sources:
                started = time.perf_counter()
                rows[name] = read()
                seconds[name].append(time.perf_counter() - started)
        answers = list(rows.values())
        if any(a != answers[0] for a in answers):
            raise RuntimeError(f"{chart}: the sources' answers differ")
        for name, _ in sources:
            timing = QueryTiming(chart, name, len(rows[name]), seconds[name][1:])
            log(f"{chart} from {name}: {timing.median_ms:.1f} ms")
            out.append(timing)
    return out


def days(start: datetime, end: datetime) -> int:
    return (end - start).days


def _sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    names = [f"{prefix}_{DEVICE_TYPE}" for prefix in ("readings", "rollup_1m", "rollup_1h")]
    return {
        name: int(
            conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
                " WHERE inhparent = %s::regclass",
                (name,),
            ).fetchone()[0]  # type: ignore[index]
        )
        for name in names
    }
