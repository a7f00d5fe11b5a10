"""Aggregate grants read the store's aggregate views when they fit: same rows as raw rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from store.aggregates import HOUR, MINUTE
from store.maintain import refresh_rollups
from streams import grants
from streams.aggregate import AggregateKey, aggregates, key_of, level_for
from streams.scope import narrow
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


def test_levels_fit_whole_minutes_and_hours_of_interval_and_range() -> None:
    h = timedelta(hours=1)
    assert level_for(h, START, END) == HOUR
    assert level_for(3 * h, START, END) == HOUR
    assert level_for(timedelta(minutes=15), START, END) == MINUTE
    # A range cut inside an hour (or a minute) reads the finer level (or raw rows).
    assert level_for(h, START + timedelta(minutes=1), END) == MINUTE
    assert level_for(h, START, END + timedelta(seconds=1)) is None
    assert level_for(timedelta(seconds=90), START, END) is None
    assert level_for(timedelta(seconds=30), START, END) is None


def test_aggregate_views_answer_exactly_as_raw_rows(town: Town) -> None:
    seed(town)
    cases = [
        ("lighting", "streetlight", "device", "1m", 1),
        ("lighting", "streetlight", "device", "1h", 1),
        ("lighting", "streetlight", "district", "1h", 1),
        ("energy", "meter", "district", "1m", 5),
        ("energy", "meter", "district", "1h", 5),
        ("energy", "meter", "district", "1h", 1),
        ("energy", "meter", "district", "15m", 3),
    ]
    made = []
    for owner, device_type, pool, interval, min_pool in cases:
        g = town.grant(owner, consumer="planning", device_types=[device_type],
                       granularity="aggregate", interval=interval, pool=pool)  # fmt: skip
        made.append((g["id"], device_type, min_pool))

    def compare() -> None:
        for grant_id, device_type, min_pool in made:
            raw = pages(town.db_url, grant_id, device_type, raw=True, min_pool=min_pool,
                        limit=10_000)  # fmt: skip
            assert raw, (grant_id, device_type)
            for limit in (10_000, 7):
                viewed = pages(town.db_url, grant_id, device_type, raw=False,
                               min_pool=min_pool, limit=limit)  # fmt: skip
                assert viewed == raw, (grant_id, device_type, limit)

    compare()  # nothing refreshed: the views aggregate raw rows at read time
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        assert refresh_rollups(conn, settle=timedelta(0)) > 0
        row = conn.execute(
            "SELECT min(watermark) FROM rollup_state"
            " WHERE relation IN ('readings_streetlight', 'readings_meter')"
        ).fetchone()
        assert row is not None and row[0] > END  # the whole range now comes from the rollups
    compare()
