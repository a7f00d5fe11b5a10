"""Attacks that held, kept holding: another consumer's grant and subscription ids, and
history parameters that try to be SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.streams.conftest import Town

pytestmark = [pytest.mark.integration, pytest.mark.security]

INJECTIONS = (
    "north' OR '1'='1",
    "north'); DROP TABLE grants; --",
    "x' UNION SELECT device_id FROM devices --",
    'power_w" IS NOT NULL OR "1',
)


def test_another_consumers_grant_and_subscription_are_refused(town: Town) -> None:
    theirs = town.grant("lighting", consumer="mobility", device_types=["streetlight"])
    with town.http("mobility") as h:
        r = h.post("/v1/subscriptions", json={"grant_id": theirs["id"], "delivery": "sse"})
        assert r.status_code == 201, r.text
        sub = r.json()
    start = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    with town.http("planning") as h:
        tries = {
            "history": h.get("/v1/history", params={"grant_id": theirs["id"], "start": start}),
            "subscribe": h.post("/v1/subscriptions",
                                json={"grant_id": theirs["id"], "delivery": "sse"}),
            "read subscription": h.get(f"/v1/subscriptions/{sub['id']}"),
            "events": h.get(f"/v1/subscriptions/{sub['id']}/events"),
            "ack": h.post(f"/v1/subscriptions/{sub['id']}/ack", json={"cursor": sub["cursor"]}),
            "delete": h.delete(f"/v1/subscriptions/{sub['id']}"),
        }  # fmt: skip
    assert {what: r.status_code for what, r in tries.items()} == dict.fromkeys(tries, 403)
    assert all(r.json()["reason"] for r in tries.values())
    with town.http("mobility") as h:
        assert h.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "active"


def test_history_parameters_are_data_never_sql(town: Town) -> None:
    p = town.prefix
    now = datetime.now(UTC)
    at = now - timedelta(minutes=2)
    town.write("streetlight", [(at, f"{p}lamp-n1", 1, 50.0, 40.0),
                               (at, f"{p}lamp-s1", 1, 50.0, 41.0)])  # fmt: skip
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   districts=["north"], metrics=["power_w"])  # fmt: skip
    start = (now - timedelta(hours=1)).isoformat()
    with town.http("planning") as h:
        outcomes = {}
        for text in INJECTIONS:
            for param in ("district", "metric", "after"):
                r = h.get("/v1/history", params={"grant_id": g["id"], "start": start, param: text})
                body = r.json()
                rows = body.get("readings", []) if r.status_code == 200 else []
                outcomes[(param, text)] = (r.status_code // 100, {x["device_id"] for x in rows})
        honest = h.get("/v1/history", params={"grant_id": g["id"], "start": start})
    # Refused (4xx with a reason), or read as a value that matches nothing: never the south.
    assert all(code == 4 or devices == set() for code, devices in outcomes.values()), outcomes
    assert {x["device_id"] for x in honest.json()["readings"]} == {f"{p}lamp-n1"}
    with town.http("lighting") as h:
        assert h.get("/v1/grants").status_code == 200  # the grants table is still there
