"""Aggregate grants read the store's aggregate views when they fit: same rows as raw rows.

The level rule is one SQL function (`silobreak_agg_level`, migration 0050) that the query
builder and the Grafana panels both call; pooled buckets come from the ledger of released
buckets, which must hold what any level computes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from store import query as store_query
from streams import grants
from streams.aggregate import AggregateKey, aggregates, key_of
from streams.scope import narrow
from tests.store.store_helpers import aggregate_watermark, refresh_aggregates
from tests.streams.conftest import Town

pytestmark = pytest.mark.integration

# Whole hours, in the past: the range the grants read, and readings on both sides of it.
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
START = END - timedelta(hours=3)


def seed(town: Town) -> None:
    """Readings every 37 s (not aligned to minutes), values multiples of ¼, some missing."""
    p = town.prefix
    lamps = [f"{p}lamp-n1", f"{p}lamp-n2", f"{p}lamp-s1"]
    meters = [f"{p}m-n{i}" for i in range(6)] + [f"{p}m-s{i}" for i in range(2)]
    times = [START - timedelta(minutes=20) + timedelta(seconds=37 * k) for k in range(400)]
    times += [START, END - timedelta(microseconds=1), END]
    town.write(
        "streetlight",
        [
            (t, d, k % 2, None if k % 5 == 0 else (k * 7 % 40) / 4, (k * 13 % 400) / 4)
            for k, t in enumerate(times)
            for d in lamps
        ],
    )
    town.write(
        "meter",
        [
            (t, d, (k * j % 97) / 4, None if (k + j) % 3 == 0 else float(j))
            for k, t in enumerate(times)
            for j, d in enumerate(meters)
            if (k + j) % 11  # some meters skip some minutes
        ],
    )


def pages(
    db_url: str, grant_id: int, device_type: str, *, raw: bool, min_pool: int, limit: int
) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            scope = narrow(await grants.get(conn, grant_id), device_type)
            out: list[dict[str, Any]] = []
            after: AggregateKey | None = None
            while True:
                rows = await aggregates(
                    conn, scope, start=START, end=END, after=after, limit=limit,
                    min_pool=min_pool, raw=raw,
                )  # fmt: skip
                out += rows
                if len(rows) < limit:
                    return out
                after = key_of(rows[-1])

    return asyncio.run(go())


def test_levels_fit_whole_minutes_and_hours_of_interval_and_range(town: Town) -> None:
    h = timedelta(hours=1)
    cases = [
        (h, START, END, "1h"),
        (3 * h, START, END, "1h"),
        (timedelta(minutes=15), START, END, "1m"),
        # A range cut inside an hour (or a minute) reads the finer level (or raw rows).
        (h, START + timedelta(minutes=1), END, "1m"),
        (h, START, END + timedelta(seconds=1), "raw"),
        (timedelta(seconds=90), START, END, "raw"),
        (timedelta(seconds=30), START, END, "raw"),
        (timedelta(days=1), None, None, "1h"),  # Grafana: the range is widened to whole steps
        (timedelta(milliseconds=60_500), None, None, "raw"),
    ]
    with psycopg.connect(town.db_url) as conn:
        for step, start, end, level in cases:
            row = conn.execute("SELECT silobreak_agg_level(%s, %s, %s)", (step, start, end))
            assert row.fetchone() == (level,), (step, start, end)


def test_aggregate_views_answer_exactly_as_raw_rows(town: Town) -> None:
    seed(town)
    cases = [
        ("lighting", "streetlight", "1m"),
        ("lighting", "streetlight", "1h"),
        ("lighting", "streetlight", "20m"),
        ("lighting", "streetlight", "90s"),
    ]
    made = []
    for owner, device_type, interval in cases:
        g = town.grant(owner, consumer="planning", device_types=[device_type],
                       granularity="aggregate", interval=interval, pool="device")  # fmt: skip
        made.append((g["id"], device_type))

    def compare() -> None:
        for grant_id, device_type in made:
            raw = pages(town.db_url, grant_id, device_type, raw=True, min_pool=1, limit=10_000)
            assert raw, (grant_id, device_type)
            for limit in (10_000, 7):
                viewed = pages(town.db_url, grant_id, device_type, raw=False, min_pool=1,
                               limit=limit)  # fmt: skip
                assert viewed == raw, (grant_id, device_type, limit)

    compare()  # nothing refreshed: the views aggregate raw rows at read time
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        assert refresh_aggregates(conn) > 0
        watermark = aggregate_watermark(conn, ("streetlight", "meter"))
        assert watermark is not None and watermark > END  # the whole range is stored now
    compare()


def test_released_pools_hold_what_every_level_computes(town: Town) -> None:
    seed(town)
    cases = [("energy", "meter", "1m", 5), ("energy", "meter", "1h", 5),
             ("energy", "meter", "15m", 3), ("lighting", "streetlight", "1h", 1)]  # fmt: skip
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        refresh_aggregates(conn)
    for owner, device_type, interval, min_pool in cases:
        g = town.grant(owner, consumer="planning", device_types=[device_type],
                       granularity="aggregate", interval=interval, pool="district")  # fmt: skip
        released = pages(town.db_url, g["id"], device_type, raw=False, min_pool=min_pool,
                         limit=10_000)  # fmt: skip
        assert released, (device_type, interval)
        assert all(set(r) == POOLED_KEYS for r in released)
        width = timedelta(seconds=g["interval_s"])
        for level in ("raw", "1m", "auto"):
            if level == "1m" and width % timedelta(minutes=1):
                continue
            with psycopg.connect(town.db_url) as conn:
                computed = conn.execute(
                    *store_query.pooled_compute(device_type, width, START, END, level=level)
                ).fetchall()
            expected = [
                (b, svc, d, m, total, n, devices)
                for b, svc, d, m, total, n, devices in computed
                if svc == owner and devices >= min_pool and n >= min_pool
            ]
            got = [
                (r["bucket"], r["service"], r["district"] or "", r["metric"], r["sum"],
                 r["count"], r["devices"])
                for r in released
            ]  # fmt: skip
            assert sorted(got) == sorted(expected), (interval, level)  # values are exact quarters
            with psycopg.connect(town.db_url) as conn:
                north = conn.execute(
                    *store_query.pooled_compute(
                        device_type, width, START, END, level=level, districts=["north"]
                    )
                ).fetchall()
            assert north == [r for r in computed if r[2] == "north"], (interval, level)


POOLED_KEYS = {"bucket", "device_id", "device_type", "service", "district", "metric", "sum",
               "avg", "count", "devices"}  # fmt: skip
