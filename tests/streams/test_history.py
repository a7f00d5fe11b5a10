"""Grants and history over the real API: exactly what is granted, 403 with a reason otherwise."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.streams.conftest import Town

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
START = (NOW - timedelta(hours=1)).isoformat()


def seed(town: Town) -> None:
    p = town.prefix
    lamps = [f"{p}lamp-n1", f"{p}lamp-n2", f"{p}lamp-s1"]
    town.write(
        "streetlight",
        [(NOW - timedelta(minutes=m), d, 1, 50.0, 40.0 + m) for m in range(1, 6) for d in lamps],
    )
    town.write(
        "traffic_light",
        [
            (NOW - timedelta(minutes=m), d, 2, m)
            for m in range(1, 6)
            for d in (f"{p}tl-n1", f"{p}tl-s1")
        ],
    )
    names = ["n0", "n1", "n2", "n3", "n4", "n5", "s0", "s1"]
    rows = [
        (NOW - timedelta(minutes=m), f"{p}m-{d}", 100.0 + m, float(i))
        for m in range(1, 6)
        for i, d in enumerate(names)
    ]
    town.write("meter", rows)


def test_without_a_grant_history_is_403_with_a_reason_and_on_record(town: Town) -> None:
    seed(town)
    with town.http("environment") as h:
        r = h.get("/v1/history", params={"start": START, "device_type": "traffic_light"})
    assert r.status_code == 403
    assert r.json()["reason"] == "no_grant"
    with town.http("data-office") as h:
        audit = h.get("/v1/audit", params={"action": "history.refused"}).json()["entries"]
    assert [e["consumer"] for e in audit] == ["environment"]


def test_a_grant_yields_exactly_its_device_types_metrics_and_districts(town: Town) -> None:
    seed(town)
    g = town.grant("mobility", consumer="environment", device_types=["traffic_light"],
                   metrics=["vehicle_count"], districts=["north"])  # fmt: skip
    with town.http("environment") as h:
        r = h.get("/v1/history", params={"start": START, "grant_id": g["id"], "limit": 2})
        assert r.status_code == 200, r.text
        pages = [r.json()]
        while pages[-1]["next_after"]:
            after = pages[-1]["next_after"]
            pages.append(
                h.get(
                    "/v1/history",
                    params={"start": START, "grant_id": g["id"], "limit": 2, "after": after},
                ).json()
            )
        got = [x for page in pages for x in page["readings"]]
        assert {(x["device_id"], x["metric"], x["district"]) for x in got} == {
            (f"{town.prefix}tl-n1", "vehicle_count", "north")
        }
        assert len(got) == 5
        assert sorted(x["value"] for x in got) == [1.0, 2.0, 3.0, 4.0, 5.0]
        csv_text = h.get("/v1/history", params={"start": START, "format": "csv"}).text
        rows = list(csv.DictReader(io.StringIO(csv_text)))
        assert len(rows) == 5
        assert {r["metric"] for r in rows} == {"vehicle_count"}

        cases: list[tuple[dict[str, Any], str]] = [
            ({"metric": "phase"}, "metric_not_granted"),
            ({"district": "south"}, "district_not_granted"),
            ({"device_type": "streetlight"}, "no_grant"),
            ({"grant_id": 999}, "unknown_grant"),
        ]
        for params, reason in cases:
            r = h.get("/v1/history", params={"start": START, **params})
            assert r.json()["reason"] == reason, (params, r.text)
            assert r.status_code == (404 if reason == "unknown_grant" else 403)
    with town.http("planning") as h:
        r = h.get("/v1/history", params={"start": START, "grant_id": g["id"]})
    assert (r.status_code, r.json()["reason"]) == (403, "not_grantee")


def test_only_the_owner_grants_and_decides_requests_on_record(town: Town) -> None:
    expires = (NOW + timedelta(days=1)).isoformat()
    spec = {"owner": "lighting", "device_types": ["streetlight"], "granularity": "raw",
            "purpose": "night-time study", "expires_at": expires}  # fmt: skip
    with town.http("mobility") as h:
        r = h.post("/v1/grants", json={**spec, "consumer": "planning"})
        assert (r.status_code, r.json()["reason"]) == (403, "not_owner")
    with town.http("planning") as h:
        request = h.post("/v1/grants", json={**spec, "consumer": "planning"}).json()
        assert request["status"] == "requested"
        r = h.get("/v1/history", params={"start": START, "grant_id": request["id"]})
        assert (r.status_code, r.json()["reason"]) == (403, "grant_requested")
        r = h.post(f"/v1/grants/{request['id']}/approve", json={})
        assert (r.status_code, r.json()["reason"]) == (403, "not_owner")
    with town.http("lighting") as h:
        approved = h.post(f"/v1/grants/{request['id']}/approve", json={"note": "ok"}).json()
        assert approved["status"] == "active"
        second = h.post("/v1/grants", json={**spec, "consumer": "planning"}).json()
        refused = h.post(f"/v1/grants/{second['id']}/refuse", json={"note": "no"})
        assert refused.status_code == 409  # an owner's own grant is active, not a request
    with town.http("planning") as h:
        third = h.post("/v1/grants", json={**spec, "consumer": "planning"}).json()
    with town.http("lighting") as h:
        assert h.post(f"/v1/grants/{third['id']}/refuse", json={"note": "no"}).json()["status"] == (
            "refused"
        )
        actions = [e["action"] for e in h.get("/v1/audit").json()["entries"]]
    assert actions[:5] == ["grant.refuse", "grant.request", "grant.create", "grant.approve",
                           "history.refused"]  # fmt: skip
    with town.http("planning") as h:
        assert h.get("/v1/audit").status_code == 403


def test_personal_data_is_never_granted_raw_nor_pooled_below_the_minimum(town: Town) -> None:
    expires = (NOW + timedelta(days=1)).isoformat()
    base = {"owner": "energy", "consumer": "planning", "device_types": ["meter"],
            "purpose": "district energy use", "expires_at": expires}  # fmt: skip
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"granularity": "raw"}, "personal_data"),
        ({"granularity": "aggregate", "interval": "15m", "pool": "device"}, "personal_data"),
        (
            {
                "granularity": "aggregate",
                "interval": "15m",
                "pool": "district",
                "min_devices": 2,
            },
            "pool_too_small",
        ),
    ]
    with town.http("energy") as h:
        for extra, reason in refusals:
            r = h.post("/v1/grants", json={**base, **extra})
            assert (r.status_code, r.json()["reason"]) == (403, reason), r.text
        ok = h.post("/v1/grants", json={**base, "granularity": "aggregate", "interval": "15m",
                                        "pool": "district"})  # fmt: skip
        assert ok.status_code == 201, ok.text


def test_an_aggregate_grant_never_yields_a_raw_reading_in_json_or_csv(town: Town) -> None:
    # Pooled buckets are released once sealed: the readings lie in an hour long past.
    hour = NOW.replace(minute=0, second=0) - timedelta(hours=2)
    names = ["n0", "n1", "n2", "n3", "n4", "n5", "s0", "s1"]
    town.write("meter", [(hour + timedelta(minutes=m), f"{town.prefix}m-{d}", 100.0 + m, float(i))
                         for m in range(1, 6) for i, d in enumerate(names)])  # fmt: skip
    g = town.grant("energy", consumer="planning", device_types=["meter"], metrics=["flow"],
                   granularity="aggregate", interval="1h", pool="district")  # fmt: skip
    window = {"start": hour.isoformat(), "end": (hour + timedelta(hours=1)).isoformat()}
    with town.http("planning") as h:
        r = h.get("/v1/history", params={**window, "granularity": "raw"})
        assert (r.status_code, r.json()["reason"]) == (403, "aggregate_only")
        body = h.get("/v1/history", params=window).json()
        csv_text = h.get("/v1/history", params={**window, "format": "csv"}).text
    rows = body["readings"]
    assert rows, body
    assert all("value" not in r and r["device_id"] is None for r in rows)
    # South has 2 meters, fewer than the minimum pool of 5: its buckets are dropped.
    assert {r["district"] for r in rows} == {"north"}
    assert all(r["devices"] == 6 and r["metric"] == "flow" for r in rows)
    assert sum(r["count"] for r in rows) == 30
    assert abs(sum(r["avg"] * r["count"] for r in rows) / 30 - 2.5) < 1e-9
    header = csv_text.splitlines()[0].split(",")
    assert "value" not in header
    assert "time" not in header
    assert not {"min", "max", "last"} & set(header)  # a pool shows no one's own reading
    assert g["granularity"] == "aggregate"


def test_the_catalog_lists_one_stream_per_service_type_and_metric(town: Town) -> None:
    seed(town)
    # The rate counts recent reading time; NOW was taken when the module was imported, which
    # may be minutes ago in a long run: one reading timed now keeps the traffic rate above 0.
    fresh = datetime.now(UTC).replace(microsecond=0)
    town.write("traffic_light", [(fresh, f"{town.prefix}tl-n1", 2, 7)])
    with town.http("planning") as h:
        streams = h.get("/v1/streams").json()
    by_key = {(s["service"], s["device_type"], s["metric"]): s for s in streams}
    flow = by_key[("energy", "meter", "flow")]
    assert flow["personal_data"] is True
    assert flow["devices"] == 8
    assert flow["districts"] == ["north", "south"]
    assert flow["unit"] == "kW"
    assert by_key[("mobility", "traffic_light", "vehicle_count")]["rate"] > 0
