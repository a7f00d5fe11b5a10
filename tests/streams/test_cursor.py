"""The commit-order cursor: rows committed out of order are seen once, late readings included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from devices.registry import new_record
from store.registry import upsert_devices
from streams import cursor
from tests.store.store_helpers import ensure_partitions

pytestmark = pytest.mark.integration

AFTER = "SELECT device_id, time FROM readings_traffic_light r WHERE " + cursor.AFTER


def snapshot(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
    assert row is not None
    return str(row[0])


def poll(conn: psycopg.Connection[tuple[object, ...]], prev: str) -> tuple[str, set[object]]:
    """One poll as the hub does it: snapshot and rows in one REPEATABLE READ transaction."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        now = snapshot(conn)
        rows = conn.execute(AFTER, {"prev": prev}).fetchall()
    return now, {r[1] for r in rows}


def test_rows_committed_out_of_order_are_each_seen_exactly_once(
    db_url: str, device_prefix: str
) -> None:
    p = device_prefix
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_devices(conn, [new_record(f"{p}tl", "traffic_light")])
    t = datetime.now(UTC)
    insert = (
        "INSERT INTO readings_traffic_light (time, device_id, service, phase)"
        " VALUES (%s, %s, 'mobility', 1)"
    )
    with (
        psycopg.connect(db_url, autocommit=True) as reader,
        psycopg.connect(db_url) as slow,
        psycopg.connect(db_url) as fast,
    ):
        days = ((t - timedelta(days=2)).date(), t.date())
        ensure_partitions(reader, "readings_traffic_light", *days)
        cur0 = snapshot(reader)
        slow.execute(insert, (t, f"{p}tl"))  # starts first (lower xid), commits last
        fast.execute(insert, (t + timedelta(seconds=1), f"{p}tl"))
        fast.commit()
        cur1, seen1 = poll(reader, cur0)
        # A late reading: its time is a day old, its commit is now.
        slow.execute(insert, (t - timedelta(days=1), f"{p}tl"))
        slow.commit()
        cur2, seen2 = poll(reader, cur1)
        _, seen3 = poll(reader, cur2)
        with reader.transaction():
            rows1 = reader.execute(AFTER, {"prev": cur1}).fetchall()
    assert seen1 == {t + timedelta(seconds=1)}  # the slow one is still in progress
    assert seen2 == {t, t - timedelta(days=1)}  # committed later, with a lower xid: not missed
    assert seen3 == set()  # and not repeated
    assert {r[1] for r in rows1} == seen2


def test_cursors_round_trip_and_garbage_is_a_422() -> None:
    at = datetime(2026, 11, 26, 6, 0, 0, 123456, tzinfo=UTC)
    for c in (
        cursor.Live("10:20:12,15"),
        cursor.Replay("10:20:", at, 1, at, "lamp.1-a"),
        cursor.Replay("10:10:", at, 0, None, ""),
        cursor.Watermark(at),
    ):
        assert cursor.decode(cursor.encode(c)) == c
    for bad in ("", "L1:2", "Lx:y:", "R1:2:/x/0//", "A", "Q1"):
        with pytest.raises(Exception, match="not a cursor"):
            cursor.decode(bad)
