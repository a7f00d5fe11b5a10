"""The one query builder: filters, order, offset, last N and the scope's rules, all in SQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from store import query as q
from store.errors import StoreError
from tests.store.store_helpers import NOW, city, readings, register, write

pytestmark = pytest.mark.integration

START = NOW - timedelta(hours=2)
Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(db_url: str, device_prefix: str) -> Iterator[Conn]:
    with psycopg.connect(db_url, autocommit=True) as c:
        register(c, city(device_prefix))
        write(db_url, readings(device_prefix, START, 120))
        yield c


def rows(conn: Conn, scope: q.Scope, **kw: Any) -> list[tuple[Any, ...]]:
    kw.setdefault("limit", None)
    return conn.execute(*q.raw(scope, start=START, end=NOW, **kw)).fetchall()


def test_a_filter_tree_is_applied_in_sql(conn: Conn, device_prefix: str) -> None:
    scope = q.Scope("air_sensor", ("pm25", "no2"))
    everything = rows(conn, scope)
    tree = q.Or((
        q.And((q.Cmp("pm25", "ge", 5.0), q.Cmp("district", "eq", "north"))),
        q.Not(q.Cmp("device_id", "in", [f"{device_prefix}air-1", f"{device_prefix}air-2"])),
    ))  # fmt: skip
    filtered = rows(conn, q.Scope("air_sensor", ("pm25", "no2"), where=tree))
    expected = [
        r for r in everything
        if (r[4] >= 5.0 and r[3] == "north") or r[1] == f"{device_prefix}air-3"
    ]  # fmt: skip
    assert filtered == expected
    assert 0 < len(filtered) < len(everything)
    with pytest.raises(StoreError, match="cannot filter"):
        q.raw(q.Scope("air_sensor", ("pm25",), where=q.Cmp("power_w", "gt", 1)), limit=1)


def test_order_offset_and_keys_page_both_ways(conn: Conn) -> None:
    scope = q.Scope("air_sensor", ("pm25",))
    ascending = rows(conn, scope)
    descending = rows(conn, scope, direction="desc")
    assert descending == ascending[::-1]
    assert rows(conn, scope, limit=5, offset=3) == ascending[3:8]
    last = descending[9]
    after = rows(conn, scope, direction="desc", after=q.RawKey(last[0], last[1]))
    assert after == descending[10:]


def test_last_n_keeps_each_devices_newest_rows(conn: Conn) -> None:
    scope = q.Scope("air_sensor", ("pm25",))
    everything = rows(conn, scope)
    newest = rows(conn, scope, last_n=2)
    by_device: dict[str, list[tuple[Any, ...]]] = {}
    for r in everything:
        by_device.setdefault(r[1], []).append(r)
    assert sorted(newest) == sorted(r for group in by_device.values() for r in group[-2:])


def test_scope_rules_owner_personal_data_and_place(conn: Conn, device_prefix: str) -> None:
    meters = rows(conn, q.Scope("meter"))
    assert {r[2] for r in meters} == {"energy", "water"}
    assert {r[2] for r in rows(conn, q.Scope("meter", owners=("water",)))} == {"water"}
    # Household meters are personal data: a scope without personal data sees none of them.
    assert rows(conn, q.Scope("meter", personal=False)) == []
    north = rows(conn, q.Scope("air_sensor", districts=("north",)))
    assert north and {r[3] for r in north} == {"north"}
    conn.execute("UPDATE devices SET lat = 1, lon = 1 WHERE device_id = %s",
                 (f"{device_prefix}air-3",))  # fmt: skip
    boxed = rows(conn, q.Scope("air_sensor", bbox=(0.5, 0.5, 1.5, 1.5)))
    assert boxed and {r[1] for r in boxed} == {f"{device_prefix}air-3"}
    with pytest.raises(StoreError, match="pooled"):
        q.raw(q.Scope("meter", pooled=True, interval=timedelta(hours=1)), limit=1)


def test_whole_buckets_never_cut_a_bucket_and_widen_covers_the_range() -> None:
    at = START + timedelta(minutes=17, microseconds=1)
    hour = timedelta(hours=1)
    assert q.whole_buckets(at, at + 2 * hour, hour) == (START + hour, START + 2 * hour)
    assert q.whole_buckets(at, at + timedelta(minutes=5), hour)[0] == START + hour
    first, last = q.whole_buckets(at, at + timedelta(minutes=5), hour)
    assert first == last  # shorter than a bucket: nothing
    assert q.widen(at, at + hour, hour) == (START, START + 2 * hour)
