"""Retention per owning service on plain PostgreSQL: whole partitions dropped, or rows deleted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import psycopg
import pytest

from store.errors import StoreError
from store.maintain import maintain, policies, set_policy
from tests.store.store_helpers import NOW, city, fetch, readings, register, write

pytestmark = pytest.mark.integration

DAYS = 40


@pytest.fixture
def conn(plain_db_url: str, device_prefix: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(plain_db_url, autocommit=True) as c:
        register(c, city(device_prefix))
        # 40 days, a reading every 4 hours per device; rollups made for all of it.
        start = NOW - timedelta(days=DAYS)
        write(plain_db_url, readings(device_prefix, start, DAYS * 24 * 60, every=240))
        maintain(c)
        yield c


def test_one_services_old_data_goes_and_anothers_stays(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    partitions = "SELECT count(*) FROM pg_inherits WHERE inhparent = %s::regclass"
    lamps_before = fetch(conn, partitions, "readings_streetlight")[0][0]
    set_policy(conn, "energy", timedelta(days=10))
    set_policy(conn, "lighting", timedelta(days=10))
    report = maintain(conn)

    oldest = "SELECT service, min(time) FROM {} GROUP BY 1 ORDER BY 1"
    by_service = dict(fetch(conn, oldest.format("readings_meter")))
    assert by_service["energy"] >= NOW - timedelta(days=11)
    assert by_service["water"] < NOW - timedelta(days=DAYS - 1)  # no policy: all kept
    # Lighting alone fills the streetlight partitions: they are dropped whole.
    assert fetch(conn, partitions, "readings_streetlight")[0][0] <= lamps_before - DAYS + 12
    assert dict(fetch(conn, oldest.format("readings_streetlight")))["lighting"] >= (
        NOW - timedelta(days=11)
    )
    # Aggregates follow the same policies.
    agg = dict(fetch(conn, oldest.replace("time", "bucket").format("rollup_1m_meter")))
    assert agg["energy"] >= NOW - timedelta(days=11)
    assert agg["water"] < NOW - timedelta(days=DAYS - 1)
    actions = {(a.relation, a.action) for a in report.retention}
    assert ("readings_streetlight", "drop") in actions
    assert ("readings_meter", "delete") in actions
    assert ("readings_air_sensor", "drop") not in actions  # environment: no policy

    # A second run has nothing left to do: deletions are not repeated.
    assert maintain(conn).retention == []


def test_aggregates_may_outlive_readings(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    set_policy(conn, "energy", timedelta(days=10), timedelta(days=30))
    maintain(conn)
    oldest = "SELECT min({}) FROM {} WHERE service = 'energy'"
    assert fetch(conn, oldest.format("time", "readings_meter"))[0][0] >= NOW - timedelta(days=11)
    minutes = fetch(conn, oldest.format("bucket", "rollup_1m_meter"))[0][0]
    assert NOW - timedelta(days=31) <= minutes < NOW - timedelta(days=29)
    # Hourly rollups sit in monthly partitions: removed a month at a time.
    hourly = fetch(conn, oldest.format("bucket", "rollup_1h_meter"))[0][0]
    assert NOW - timedelta(days=30 + 31) <= hourly < NOW - timedelta(days=29)


def test_policies_that_cannot_hold_are_refused(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    with pytest.raises(StoreError, match="positive"):
        set_policy(conn, "water", timedelta(0))
    with pytest.raises(StoreError, match="less time"):
        set_policy(conn, "water", timedelta(days=30), timedelta(days=3))
    with pytest.raises(StoreError, match="8d"):
        set_policy(conn, "water", timedelta(days=2), timedelta(days=30))
    set_policy(conn, "water", timedelta(days=400))
    set_policy(conn, "water", timedelta(days=300))
    assert [(p.service, p.keep.days) for p in policies(conn)] == [("water", 300)]
