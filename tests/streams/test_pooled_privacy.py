"""Pooled personal data reveals no household: each differencing attack, tried over the API.

A pooled hourly grant on household meters (north: six meters, south: two). An attacker with
that grant tries to isolate one household's reading by comparing two answers that differ by
one reading: by cutting the range, by the district set, by a bounding box, by a device joining
or leaving the pool, and by a reading that arrives late. Each pair of answers must be equal,
and no row may carry a min, max or last (docs/streams.md, "Pooled data").
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.streams.conftest import Town

pytestmark = [pytest.mark.integration, pytest.mark.security]

# Whole hours, sealed long ago: the buckets the attacks compare.
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
START = END - timedelta(hours=3)
POOLED_KEYS = {"bucket", "device_id", "device_type", "service", "district", "metric", "sum",
               "avg", "count", "devices"}  # fmt: skip
NORTH = [f"m-n{i}" for i in range(6)]


def seed(town: Town) -> None:
    """A reading every 10 minutes from every meter; `flow` only from two northern meters in
    the first hour (below the pool minimum there), `index` from all."""
    p = town.prefix
    rows = []
    for k in range(18):
        at = START + timedelta(minutes=10 * k)
        for j, name in enumerate([*NORTH, "m-s0", "m-s1"]):
            flow = float(j + k) if (k >= 6 or j < 2) else None
            rows.append((at, f"{p}{name}", 100.0 * j + k, flow))
    town.write("meter", rows)


def history(town: Town, grant_id: int, **params: Any) -> list[dict[str, Any]]:
    with town.http("planning") as h:
        r = h.get("/v1/history", params={"grant_id": grant_id, "limit": 10_000, **params})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["readings"]
    return rows


@pytest.fixture
def pooled(town: Town) -> dict[str, Any]:
    seed(town)
    return town.grant("energy", consumer="planning", device_types=["meter"],
                      granularity="aggregate", interval="1h", pool="district")  # fmt: skip


def test_pooled_rows_carry_sum_avg_count_and_devices_only(
    town: Town, pooled: dict[str, Any]
) -> None:
    rows = history(town, pooled["id"], start=START.isoformat(), end=END.isoformat())
    assert rows
    assert all(set(r) == POOLED_KEYS for r in rows)
    assert {r["district"] for r in rows} == {"north"}  # south: two meters, under the minimum
    assert all(r["devices"] >= 5 and r["count"] >= 5 for r in rows)
    with town.http("planning") as h:
        r = h.get("/v1/history", params={"grant_id": pooled["id"], "start": START.isoformat(),
                                         "end": END.isoformat(), "format": "csv"})  # fmt: skip
    header = next(csv.reader(io.StringIO(r.text)))
    assert not {"min", "max", "last", "value", "device_id"} & set(header)
    assert {"sum", "avg", "count", "devices"} <= set(header)


def test_the_pool_minimum_counts_per_metric_and_bucket(town: Town, pooled: dict[str, Any]) -> None:
    rows = history(town, pooled["id"], start=START.isoformat(), end=END.isoformat())
    first_hour = {r["metric"] for r in rows if r["bucket"] == START.isoformat()}
    # Two meters sent flow in the first hour: its flow row would be nearly theirs alone.
    assert first_hour == {"index"}
    later = {r["metric"] for r in rows if r["bucket"] != START.isoformat()}
    assert later == {"index", "flow"}


def test_a_range_cut_by_a_microsecond_changes_nothing(town: Town, pooled: dict[str, Any]) -> None:
    whole = history(town, pooled["id"], start=START.isoformat(), end=END.isoformat())
    for start, end in [
        (START, END - timedelta(microseconds=1)),
        (START + timedelta(microseconds=1), END),
        (START - timedelta(microseconds=1), END + timedelta(microseconds=1)),
        (START + timedelta(minutes=59, seconds=59), END),
    ]:
        cut = history(town, pooled["id"], start=start.isoformat(), end=end.isoformat())
        # Only whole buckets inside the range: a cut drops a bucket, it never shortens one.
        assert all(r in whole for r in cut)
        kept = {r["bucket"] for r in cut}
        assert cut == [r for r in whole if r["bucket"] in kept]


def test_the_district_set_selects_whole_pools(town: Town, pooled: dict[str, Any]) -> None:
    north = history(town, pooled["id"], start=START.isoformat(), end=END.isoformat(),
                    district=["north"])  # fmt: skip
    both = history(town, pooled["id"], start=START.isoformat(), end=END.isoformat(),
                   district=["north", "south"])  # fmt: skip
    assert north
    assert north == [r for r in both if r["district"] == "north"]


def test_a_bounding_box_never_cuts_a_pool(town: Town) -> None:
    seed(town)
    p = town.prefix
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET lat = 50.1, lon = 4.1 WHERE device_id = ANY(%s)",
                     ([f"{p}{n}" for n in NORTH],))  # fmt: skip
        # One northern meter stands outside the box: the box covers part of the pool.
        conn.execute("UPDATE devices SET lat = 52.0 WHERE device_id = %s", (f"{p}m-n5",))
    cutting = town.grant("energy", consumer="planning", device_types=["meter"],
                         granularity="aggregate", interval="1h", pool="district",
                         bbox=[4.0, 50.0, 4.5, 50.5])  # fmt: skip
    assert history(town, cutting["id"], start=START.isoformat(), end=END.isoformat()) == []
    covering = town.grant("energy", consumer="planning", device_types=["meter"],
                          granularity="aggregate", interval="1h", pool="district",
                          bbox=[4.0, 50.0, 4.5, 52.5])  # fmt: skip
    rows = history(town, covering["id"], start=START.isoformat(), end=END.isoformat())
    assert rows and {r["devices"] for r in rows if r["metric"] == "index"} == {6}


def test_a_released_bucket_never_changes(town: Town, pooled: dict[str, Any]) -> None:
    before = history(town, pooled["id"], start=START.isoformat(), end=END.isoformat())
    p = town.prefix
    # A device leaves the pool, another joins it, and a late reading arrives in a released
    # bucket: re-reading must not show the difference of any of them.
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET district = 'south' WHERE device_id = %s", (f"{p}m-n0",))
        conn.execute("UPDATE devices SET district = 'north' WHERE device_id = %s", (f"{p}m-s0",))
    town.write("meter", [(START + timedelta(minutes=5), f"{p}m-n3", 999.0, 42.0)])
    after = history(town, pooled["id"], start=START.isoformat(), end=END.isoformat())
    assert after == before
    # Buckets of another width released after it count the late reading, in the pool its
    # device stood in at the time (where devices stand now does not move history).
    half = town.grant("energy", consumer="planning", device_types=["meter"],
                      granularity="aggregate", interval="30m", pool="district")  # fmt: skip
    rows = history(town, half["id"], start=START.isoformat(), end=END.isoformat())
    first = [r for r in rows if r["bucket"] == START.isoformat() and r["metric"] == "index"]
    assert [(r["district"], r["count"], r["devices"]) for r in first] == [("north", 19, 6)]


def test_buckets_not_yet_sealed_are_not_released(town: Town) -> None:
    now = datetime.now(UTC)
    p = town.prefix
    town.write("meter", [(now - timedelta(seconds=1), f"{p}{n}", 1.0, 1.0) for n in NORTH])
    g = town.grant("energy", consumer="planning", device_types=["meter"],
                   granularity="aggregate", interval="1d", pool="district")  # fmt: skip
    rows = history(town, g["id"], start=(now - timedelta(days=2)).isoformat())
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    assert all(datetime.fromisoformat(r["bucket"]) < today for r in rows)
    with psycopg.connect(town.db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pooled_released WHERE width = '1 day' AND bucket >= %s",
            (today,),
        ).fetchone()
    assert row == (0,)
