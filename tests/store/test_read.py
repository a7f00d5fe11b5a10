"""The read interface on plain PostgreSQL: raw pages by key, buckets, latest, chart series."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from store.errors import StoreError
from store.maintain import maintain
from store.query import widen
from store.read import Selection
from store.reader import AsyncStoreReader, StoreReader
from tests.store.store_helpers import NOW, city, readings, register, write

pytestmark = pytest.mark.integration

START = NOW - timedelta(hours=3)


@pytest.fixture
def reader(db_url: str, device_prefix: str) -> Iterator[StoreReader]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
        write(db_url, readings(device_prefix, START, 180))
        yield StoreReader(conn)


def test_raw_pages_cover_the_range_once_in_time_then_device_order(
    reader: StoreReader, device_prefix: str
) -> None:
    sel = Selection("air_sensor", ("pm25", "no2"))
    whole = reader.raw_range(sel, START, NOW, limit=100_000)
    assert whole.next is None
    paged, after = [], None
    while True:
        page = reader.raw_range(sel, START, NOW, after=after, limit=10)
        paged += page.readings
        if page.next is None:
            break
        after = page.next
    assert paged == whole.readings
    keys = [(r.time, r.device_id) for r in paged]
    assert keys == sorted(keys)
    assert {r.metric for r in paged} == {"pm25", "no2"}
    assert all(r.district in ("north", "south") and r.service == "environment" for r in paged)
    assert len({(r.time, r.device_id, r.metric) for r in paged}) == len(paged)


def test_every_level_gives_the_same_buckets(reader: StoreReader, db_url: str) -> None:
    sel = Selection("air_sensor", district="north")
    step = timedelta(hours=1)
    raw = reader.buckets(sel, START, NOW, step, level="raw")
    assert reader.buckets(sel, START, NOW, step, level="1m") == raw
    assert reader.buckets(sel, START, NOW, step) == raw  # auto: the 1-hour aggregates
    with psycopg.connect(db_url, autocommit=True) as conn:
        maintain(conn)
    assert reader.buckets(sel, START, NOW, step) == raw
    pooled = reader.buckets(sel, START, NOW, step, pool="district")
    assert {(b.district, b.devices, b.device_id, b.last) for b in pooled} == {
        ("north", 2, None, None)
    }
    for b in pooled:
        same = [x for x in raw if (x.bucket, x.metric) == (b.bucket, b.metric)]
        assert b.count == sum(x.count for x in same)
        assert b.sum == pytest.approx(sum(x.avg * x.count for x in same if x.avg is not None))
        # A pool shows no one's own reading: no min, max or last.
        assert (b.min, b.max, b.last) == (None, None, None)


def test_buckets_widen_the_range_to_whole_steps() -> None:
    at = datetime(2026, 3, 4, 10, 17, 5, tzinfo=UTC)
    assert widen(at, at + timedelta(minutes=20), timedelta(minutes=15)) == (
        datetime(2026, 3, 4, 10, 15, tzinfo=UTC),
        datetime(2026, 3, 4, 10, 45, tzinfo=UTC),
    )
    with pytest.raises(StoreError):
        Selection("air_sensor", ("power_w",))


def test_latest_is_by_reading_time_not_by_arrival(
    reader: StoreReader, db_url: str, device_prefix: str
) -> None:
    dev = f"{device_prefix}meter-e"
    # Arrives last but was read an hour ago: not the latest value.
    write(db_url, {"meter": [(NOW - timedelta(hours=1, seconds=1), dev, "energy", 999.0, None)]})
    latest = {(r.device_id, r.metric): r for r in reader.latest(Selection("meter"))}
    assert latest[(dev, "index")].value != 999.0
    assert latest[(dev, "index")].time > NOW - timedelta(minutes=10)
    # A metric a newer row lacks keeps its own latest value.
    write(db_url, {"meter": [(NOW + timedelta(minutes=1), dev, "energy", None, 2.5)]})
    latest = {(r.device_id, r.metric): r for r in reader.latest(Selection("meter"))}
    assert latest[(dev, "flow")].value == 2.5
    assert latest[(dev, "index")].time < latest[(dev, "flow")].time


def test_series_of_a_long_range_stays_within_its_point_budget(
    reader: StoreReader, device_prefix: str
) -> None:
    sel = Selection("air_sensor", ("pm25",), device_ids=(f"{device_prefix}air-1",))
    minmax = reader.series(sel, START, NOW, max_points=12)
    assert 6 <= len(minmax) <= 12
    assert all(p.min <= p.value <= p.max for p in minmax)
    lttb = reader.series(sel, START, NOW, max_points=8, method="lttb")
    assert len(lttb) == 8
    raw = reader.raw_range(sel, START, NOW).readings
    assert lttb[0].time == raw[0].time.replace(second=0)  # the first point is kept
    assert {p.value for p in lttb} <= {r.value for r in raw}  # real points, not averages


def test_async_reader_gives_what_the_sync_one_gives(reader: StoreReader, db_url: str) -> None:
    sel = Selection("streetlight")

    async def go() -> tuple[object, ...]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            r = AsyncStoreReader(conn)
            return (
                (await r.raw_range(sel, START, NOW)).readings,
                await r.buckets(sel, START, NOW, timedelta(minutes=30)),
                await r.latest(sel),
            )

    assert asyncio.run(go()) == (
        reader.raw_range(sel, START, NOW).readings,
        reader.buckets(sel, START, NOW, timedelta(minutes=30)),
        reader.latest(sel),
    )
