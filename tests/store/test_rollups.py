"""Plain-PostgreSQL rollups: maintained from the commit order, real-time above the watermark."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from store.maintain import maintain, refresh_rollups
from store.read import Selection
from store.reader import StoreReader
from tests.store.store_helpers import NOW, city, fetch, readings, register, write

pytestmark = pytest.mark.integration

START = NOW - timedelta(hours=2)


def test_a_refresh_recomputes_only_what_changed_since_the_last(
    plain_db_url: str, device_prefix: str
) -> None:
    with psycopg.connect(plain_db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
        write(plain_db_url, readings(device_prefix, START, 120))
        first = refresh_rollups(conn)
        assert first >= 7  # at least one piece per device
        assert refresh_rollups(conn) == 0  # nothing new
        dev = f"{device_prefix}air-2"
        write(plain_db_url, {"air_sensor": [(START + timedelta(minutes=61), dev, "environment",
                                       4.0, None, None, None, None, None)]})  # fmt: skip
        assert refresh_rollups(conn) == 1
        rows = fetch(
            conn,
            "SELECT bucket, pm25_count FROM rollup_1m_air_sensor WHERE device_id = %s"
            " AND bucket = %s",
            dev,
            START + timedelta(minutes=61),
        )
        assert rows == [(START + timedelta(minutes=61), 1)]


def test_a_metric_filled_in_later_reaches_the_rollups(
    plain_db_url: str, device_prefix: str
) -> None:
    dev = f"{device_prefix}lamp-1"
    at = START + timedelta(minutes=3)
    with psycopg.connect(plain_db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
        write(plain_db_url, {"streetlight": [(at, dev, "lighting", 1, None, None)]})
        maintain(conn)
        # Same device and time again with a metric the first message lacked: merged in.
        write(plain_db_url, {"streetlight": [(at, dev, "lighting", 0, 30.0, None)]})
        maintain(conn)
        sel = Selection("streetlight", ("lamp_on", "dim_level"), device_ids=(dev,))
        got = StoreReader(conn).buckets(sel, at, at + timedelta(minutes=1), timedelta(minutes=1))
    assert {(b.metric, b.avg, b.count) for b in got} == {
        ("lamp_on", 1.0, 1),
        ("dim_level", 30.0, 1),
    }


def test_views_read_raw_rows_above_the_watermark(plain_db_url: str, device_prefix: str) -> None:
    dev = f"{device_prefix}air-1"
    sel = Selection("air_sensor", ("pm25",), device_ids=(dev,))
    with psycopg.connect(plain_db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
        maintain(conn)
        ((watermark,),) = fetch(
            conn, "SELECT watermark FROM rollup_state WHERE relation = 'readings_air_sensor'"
        )
        assert NOW - timedelta(minutes=5) < watermark  # settle (2 min) before the refresh
        fresh = watermark + timedelta(seconds=30)
        write(plain_db_url, {"air_sensor": [(fresh, dev, "environment", 8.5, *[None] * 5)]})
        # Not refreshed yet, but above the watermark: aggregated from the raw row.
        got = StoreReader(conn).buckets(sel, fresh, fresh, timedelta(minutes=1))
        assert [(b.avg, b.count) for b in got] == [(8.5, 1)]
        assert fetch(conn, "SELECT count(*) FROM rollup_1m_air_sensor") == [(0,)]


def test_a_second_maintainer_skips_what_the_first_holds(
    plain_db_url: str, device_prefix: str
) -> None:
    with (
        psycopg.connect(plain_db_url, autocommit=True) as first,
        psycopg.connect(plain_db_url, autocommit=True) as second,
    ):
        register(first, city(device_prefix))
        write(plain_db_url, readings(device_prefix, START, 30))
        first.execute("SELECT pg_advisory_lock(%s, hashtext('readings_meter'))", (0x51_10,))
        pieces = refresh_rollups(second)
        assert fetch(second, "SELECT count(*) FROM rollup_1m_meter") == [(0,)]
        assert pieces > 0  # the other device types were refreshed
        first.execute("SELECT pg_advisory_unlock_all()")
        assert refresh_rollups(second) == 2  # the two meters, once the lock is free
