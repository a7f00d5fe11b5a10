"""The platform recorder: an ingest process's counters and the city's figures in the store."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ingest.metrics import IngestMetrics
from silobreak.recorder import Counters, PlatformRecorder, window

# Short windows so a test sees several; the production value is 10 s.
EVERY = timedelta(milliseconds=200)


def test_a_window_holds_the_counter_deltas_and_the_mean_commit_time() -> None:
    metrics = IngestMetrics()
    before = Counters.read(metrics.registry)
    metrics.received.inc(10)
    metrics.stored.inc(8)
    metrics.rejected.labels("schema_violation").inc(2)
    metrics.batch_seconds.observe(0.1)
    metrics.batch_seconds.observe(0.3)
    metrics.pending.set(4)
    metrics.store_up.set(1)
    at = datetime(2026, 11, 26, 6, tzinfo=UTC)
    got = window(before, Counters.read(metrics.registry), source="ingest:a", at=at,
                 span=timedelta(seconds=10))  # fmt: skip
    assert (got.received, got.stored, got.pending, got.batches) == (10, 8, 4, 2)
    assert got.rejected["schema_violation"] == 2 and got.rejected["unknown_device"] == 0
    assert got.commit_s == pytest.approx(0.2)
    assert got.store_up
    assert window(before, before, source="a", at=at, span=EVERY).commit_s is None


@pytest.mark.integration
def test_two_recorders_write_their_own_rows_and_count_each_delivery_once(db_url: str) -> None:
    first, second = IngestMetrics(), IngestMetrics()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_log (actor, action, readings) VALUES"
            " ('streams', 'delivery.batch', 5), ('streams', 'delivery.batch', 7),"
            " ('streams', 'grant.create', 100)"
        )

    async def run() -> None:
        stop = asyncio.Event()
        recorders = [
            PlatformRecorder(db_url, source=f"ingest:{name}", registry=m.registry, every=EVERY)
            for name, m in (("one", first), ("two", second))
        ]
        tasks = [asyncio.create_task(r.run(stop)) for r in recorders]
        first.stored.inc(30)
        second.stored.inc(12)
        deadline = time.monotonic() + 10
        while await asyncio.to_thread(_stored, db_url) < 42:
            assert time.monotonic() < deadline, "the recorders wrote nothing"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())
    with psycopg.connect(db_url) as conn:
        per_source: dict[str, int] = dict(
            conn.execute("SELECT source, sum(stored) FROM platform_stats GROUP BY 1").fetchall()
        )
        assert per_source == {"ingest:one": 30, "ingest:two": 12}
        delivered = conn.execute(
            "SELECT sum(deliveries), sum(delivered_readings), count(*), count(DISTINCT time)"
            " FROM platform_fleet_stats"
        ).fetchone()
        assert delivered is not None
        assert delivered[:2] == (2, 12)
        assert delivered[2] == delivered[3]  # one city row per slot, whoever wrote it


def _stored(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(stored), 0) FROM platform_stats").fetchone()
    return int(row[0]) if row else 0
