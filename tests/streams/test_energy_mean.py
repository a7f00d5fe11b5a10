"""Sound levels under an aggregate grant: energy means from raw rows and from stored levels."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from devices.registry import new_record
from store.lifecycle import register_devices
from tests.store.store_helpers import refresh_aggregates
from tests.streams.conftest import ACTOR, Town
from tests.streams.test_aggregate_levels import pages

pytestmark = pytest.mark.integration

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
START = END - timedelta(hours=3)


def test_an_aggregate_grant_averages_sound_levels_as_energy_from_raw_rows_and_levels(
    town: Town,
) -> None:
    dev = f"{town.prefix}noise-n1"
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        register_devices(conn, [new_record(dev, "noise_sensor", district="north")], actor=ACTOR)
    town.devices[dev] = ("noise_sensor", "environment", "north")
    hour = START + timedelta(hours=1)
    town.write(
        "noise_sensor",
        [
            (hour + timedelta(minutes=5), dev, 60.0, 70.0),
            (hour + timedelta(minutes=5, seconds=30), dev, 80.0, 90.0),
            (hour + timedelta(minutes=6), dev, 70.0, 75.0),
        ],
    )
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        refresh_aggregates(conn)
    grant = town.grant(
        "environment", consumer="planning", device_types=["noise_sensor"], metrics=["laeq"],
        granularity="aggregate", interval="1h", pool="device",
    )  # fmt: skip
    want = 10 * math.log10((1e6 + 1e8 + 1e7) / 3)  # 75.68 dB; the arithmetic mean is 70
    for raw in (True, False):
        rows = pages(town.db_url, grant["id"], "noise_sensor", raw=raw, min_pool=5, limit=100)
        assert [(r["bucket"], r["metric"], r["count"]) for r in rows] == [(hour, "laeq", 3)]
        assert rows[0]["avg"] == pytest.approx(want), raw
        assert (rows[0]["min"], rows[0]["max"]) == (60.0, 80.0)
    with town.http("planning") as h:
        r = h.get(
            "/v1/history",
            params={"start": START.isoformat(), "end": END.isoformat(), "grant_id": grant["id"]},
        )
        streams = h.get("/v1/streams").json()
    assert r.status_code == 200, r.text
    (row,) = r.json()["readings"]
    assert row["avg"] == pytest.approx(want)
    how = {(s["device_type"], s["metric"]): s["aggregation"] for s in streams}
    assert how[("noise_sensor", "laeq")] == "energy_mean"
    assert how[("air_sensor", "pm25")] == "mean"
