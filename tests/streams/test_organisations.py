"""Organisations on one platform: isolated by default, sharing by contract.

A city (the town of conftest.py, migrated into the organisation `city`), a neighbouring
commune and a regional syndicate share one API, one database and one broker. Every read of
another organisation's data without a grant is refused; a contract between two takes effect
only when both coordinators have signed it, and its terms travel with the data.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from devices.errors import RegistryImportError
from devices.registry import new_record, parse_csv
from silobreak.local import LocalMosquitto
from store.lifecycle import register_devices
from store.organisations import add_organisation, offer_stream
from store.principals import add_principal, issue_token
from store.sql_roles import ensure_roles
from streams.client import StreamsClient, SubscriptionEnded
from tests.streams.conftest import ACTOR, Town, running_town

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
START = (NOW - timedelta(hours=1)).isoformat()
COMMUNE = ("c-lighting", "c-office", "c-analysts")
SYNDICATE = ("s-office", "s-energy")


@pytest.fixture
def region(db_url: str, device_prefix: str, mqtt_broker: LocalMosquitto) -> Iterator[Town]:
    """The town (organisation `city`) plus a commune and a regional syndicate."""
    with running_town(db_url, device_prefix, mqtt_broker) as town:
        p = town.prefix
        with psycopg.connect(db_url, autocommit=True) as conn:
            add_organisation(conn, "commune", "municipality", display_name="Bourg", actor=ACTOR)
            add_organisation(conn, "syndicate", "syndicate", actor=ACTOR)
            add_principal(conn, "c-lighting", "service", organisation="commune", actor=ACTOR)
            add_principal(conn, "c-office", "coordinator", organisation="commune", actor=ACTOR)
            add_principal(conn, "c-analysts", "team", organisation="commune", actor=ACTOR)
            add_principal(conn, "s-office", "coordinator", organisation="syndicate", actor=ACTOR)
            add_principal(conn, "s-energy", "team", organisation="syndicate", actor=ACTOR)
            commune_fleet = [
                new_record(f"{p}c-lamp1", "streetlight", "c-lighting", district="bourg"),
                new_record(f"{p}c-lamp2", "streetlight", "c-lighting", district="bourg"),
            ]
            register_devices(conn, commune_fleet, actor=ACTOR, organisation="commune")
            for name in (*COMMUNE, *SYNDICATE):
                town.tokens[name] = issue_token(
                    conn, name, ttl=timedelta(days=1), actor=ACTOR
                ).token
            # The city lets the others discover its streetlights' power, nothing else.
            offer_stream(
                conn, "lighting", "streetlight", metrics=("power_w",),
                terms={"granularity": "raw", "delete_after_days": 30}, actor=ACTOR,
            )  # fmt: skip
        for r in commune_fleet:
            town.devices[r.device_id] = (r.device_type, r.service, r.district or "")
        town.write(
            "streetlight",
            [
                (NOW - timedelta(minutes=m), d, 1, 50.0, 40.0 + m)
                for m in range(1, 4)
                for d in (f"{p}lamp-n1", f"{p}lamp-s1", f"{p}c-lamp1")
            ],
        )
        yield town


def contract(town: Town, **extra: Any) -> dict[str, Any]:
    """The commune's analysts ask for the city's streetlight power (a contract to be signed)."""
    body = {
        "owner": "lighting", "consumer": "c-analysts", "device_types": ["streetlight"],
        "metrics": ["power_w"], "granularity": "raw", "purpose": "lighting benchmark",
        "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
        "obligations": {"delete_after_days": 30, "attribution": "Ville - open lighting data"},
        **extra,
    }  # fmt: skip
    with town.http("c-analysts") as h:
        r = h.post("/v1/grants", json=body)
    assert r.status_code == 201, r.text
    grant: dict[str, Any] = r.json()
    return grant


def post(town: Town, who: str, path: str, body: Any = None) -> Any:
    with town.http(who) as h:
        return h.post(path, json={} if body is None else body)


def test_a_contract_takes_effect_only_once_both_coordinators_have_signed(region: Town) -> None:
    g = contract(region)
    assert (g["status"], g["owner_org"], g["consumer_org"]) == ("requested", "city", "commune")
    assert g["awaiting"] == ["owner_coordinator", "consumer_coordinator"]
    assert g["redistribution"] == "prohibited"
    gid = g["id"]
    history = {"grant_id": gid, "start": START}

    # The owner service alone cannot let data leave its organisation.
    r = post(region, "lighting", f"/v1/grants/{gid}/approve")
    assert (r.status_code, r.json()["reason"]) == (403, "not_owner_coordinator")
    # Nor can the consumer's coordinator approve for the owner, or the owner's accept for it.
    r = post(region, "c-office", f"/v1/grants/{gid}/approve")
    assert (r.status_code, r.json()["reason"]) == (403, "not_owner_coordinator")
    r = post(region, "data-office", f"/v1/grants/{gid}/accept")
    assert (r.status_code, r.json()["reason"]) == (403, "not_consumer_coordinator")
    # A third organisation does not even see it.
    r = post(region, "s-office", f"/v1/grants/{gid}/approve")
    assert (r.status_code, r.json()["reason"]) == (404, "unknown_grant")

    r = post(region, "data-office", f"/v1/grants/{gid}/approve", {"note": "ok by the CDO"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["awaiting"]) == ("requested", ["consumer_coordinator"])
    with region.http("c-analysts") as h:
        refused = h.get("/v1/history", params=history)
    assert (refused.status_code, refused.json()["reason"]) == (403, "grant_requested")

    r = post(region, "c-office", f"/v1/grants/{gid}/accept", {"note": "terms read"})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["awaiting"]) == ("active", [])
    assert r.json()["consumer_accepted_by"] == "c-office"
    assert r.json()["owner_approved_by"] == "data-office"

    with region.http("c-analysts") as h:
        page = h.get("/v1/history", params=history)
    assert page.status_code == 200, page.text
    body = page.json()
    p = region.prefix
    assert {x["device_id"] for x in body["readings"]} == {f"{p}lamp-n1", f"{p}lamp-s1"}
    assert {x["metric"] for x in body["readings"]} == {"power_w"}
    assert body["terms"] == {
        "grant_id": gid, "owner": "lighting", "owner_org": "city", "consumer": "c-analysts",
        "consumer_org": "commune", "purpose": "lighting benchmark",
        "expires_at": body["terms"]["expires_at"], "granularity": "raw",
        "redistribution": "prohibited",
        "obligations": {"delete_after_days": 30, "attribution": "Ville - open lighting data"},
    }  # fmt: skip
    with region.http("c-analysts") as h:
        csv_page = h.get("/v1/history", params={**history, "format": "csv"})
    assert '"redistribution":"prohibited"' in csv_page.headers["x-silobreak-terms"]

    # Acceptance is on record with the terms accepted, in both organisations' audit.
    for office in ("data-office", "c-office"):
        with region.http(office) as h:
            entries = h.get("/v1/audit", params={"grant_id": gid}).json()["entries"]
        actions = [e["action"] for e in entries]
        assert {"grant.request", "grant.approve", "grant.accept", "grant.activate",
                "history.read"} <= set(actions)  # fmt: skip
        accepted = next(e for e in entries if e["action"] == "grant.accept")
        assert accepted["detail"]["terms"]["obligations"]["delete_after_days"] == 30


def test_live_delivery_carries_the_terms_and_either_coordinator_revocation_ends_it(
    region: Town,
) -> None:
    p = region.prefix
    gid = contract(region)["id"]
    assert post(region, "data-office", f"/v1/grants/{gid}/approve").status_code == 200
    assert post(region, "c-office", f"/v1/grants/{gid}/accept").status_code == 200
    ended: dict[str, Any] = {}

    async def go() -> list[Any]:
        events = []
        async with StreamsClient(region.base, region.tokens["c-analysts"]) as client:
            sub = await client.create_subscription(grant_id=gid, delivery="sse")
            await asyncio.to_thread(
                region.write, "streetlight", [(datetime.now(UTC), f"{p}lamp-n1", 1, 5.0, 7.0)]
            )
            try:
                async with asyncio.timeout(60):
                    async for event in client.events(sub["id"]):
                        events.append(event)
                        if "revoked_at" not in ended and any(
                            r["value"] == 7.0 for r in event.readings
                        ):
                            await asyncio.to_thread(revoke)
            except SubscriptionEnded as exc:
                ended["reason"] = exc.reason
        return events

    def revoke() -> None:
        # The consumer's own coordinator may end the contract too.
        r = post(region, "c-office", f"/v1/grants/{gid}/revoke", {"note": "study over"})
        assert r.status_code == 200, r.text
        ended["revoked_at"] = time.monotonic()

    events = asyncio.run(go())
    assert ended["reason"] == "grant_revoked"
    live = [e for e in events if e.readings]
    assert live
    assert all(e.terms["grant_id"] == gid for e in live)
    assert all(e.terms["redistribution"] == "prohibited" for e in live)
    assert live[0].terms["obligations"]["attribution"] == "Ville - open lighting data"


def test_a_stream_not_offered_is_as_unknown_as_one_that_does_not_exist(region: Town) -> None:
    def ask(owner: str, device_types: list[str]) -> Any:
        with region.http("c-analysts") as h:
            return h.post("/v1/grants", json={
                "owner": owner, "consumer": "c-analysts", "device_types": device_types,
                "granularity": "raw", "purpose": "x",
                "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            })  # fmt: skip

    not_offered = ask("mobility", ["traffic_light"])
    missing = ask("no-such-service", ["traffic_light"])
    assert not_offered.status_code == missing.status_code == 422
    assert not_offered.json()["reason"] == missing.json()["reason"] == "unknown_owner"
    # Offered for streetlights only: asking for more than is offered is refused the same way.
    assert ask("lighting", ["streetlight", "meter"]).json()["reason"] == "unknown_owner"
    assert ask("lighting", ["streetlight"]).status_code == 201


def test_the_catalog_lists_the_own_organisation_and_only_what_others_offer(region: Town) -> None:
    with region.http("c-analysts") as h:
        streams = h.get("/v1/streams").json()
    seen = {(s["organisation"], s["service"], s["device_type"], s["metric"]) for s in streams}
    assert ("city", "lighting", "streetlight", "power_w") in seen
    assert not any(org == "city" and metric != "power_w" for org, _, _, metric in seen)
    assert not any(svc in ("mobility", "energy", "environment") for _, svc, _, _ in seen)
    assert ("commune", "c-lighting", "streetlight", "dim_level") in seen
    offered = next(s for s in streams if s["organisation"] == "city")
    assert offered["offered"] == {"granularity": "raw", "delete_after_days": 30}
    with region.http("s-energy") as h:
        theirs = {s["organisation"] for s in h.get("/v1/streams").json()}
    assert theirs == {"city"}  # the syndicate has no devices; the commune offers nothing
    with region.http("planning") as h:
        own = h.get("/v1/streams").json()
    assert "commune" not in {s["organisation"] for s in own}
    assert all(s["offered"] is None for s in own)


def test_data_received_under_a_grant_is_never_granted_onward(region: Town) -> None:
    # The city's lighting reads the commune's lamps (an internal grant there would be no
    # contract: make it one, signed by both coordinators).
    with psycopg.connect(region.db_url, autocommit=True) as conn:
        offer_stream(conn, "c-lighting", "streetlight", actor=ACTOR)
    with region.http("planning") as h:
        asked = h.post("/v1/grants", json={
            "owner": "c-lighting", "consumer": "planning", "device_types": ["streetlight"],
            "granularity": "raw", "purpose": "street works",
            "expires_at": (datetime.now(UTC) + timedelta(days=3)).isoformat(),
        })  # fmt: skip
    assert asked.status_code == 201, asked.text
    gid = asked.json()["id"]
    assert post(region, "c-office", f"/v1/grants/{gid}/approve").status_code == 200
    assert post(region, "data-office", f"/v1/grants/{gid}/accept").json()["status"] == "active"
    # planning is a team: it owns nothing and so grants nothing.
    onward = {
        "owner": "planning", "consumer": "environment", "device_types": ["streetlight"],
        "granularity": "raw", "purpose": "pass it on",
        "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    }  # fmt: skip
    r = post(region, "planning", "/v1/grants", onward)
    assert r.status_code in (403, 422)
    # A service that reads another's data and owns none of that type cannot pass it on, by
    # granting or by approving a request for it.
    with psycopg.connect(region.db_url, autocommit=True) as conn:
        add_principal(conn, "c-roads", "service", organisation="commune", actor=ACTOR)
        token = issue_token(conn, "c-roads", ttl=timedelta(days=1), actor=ACTOR).token
        region.tokens["c-roads"] = token
    with region.http("c-analysts") as h:
        r1 = h.post("/v1/grants", json={**onward, "owner": "c-lighting", "consumer": "c-roads"})
    # c-analysts cannot request for another consumer.
    assert r1.json()["reason"] == "not_owner"
    with region.http("c-lighting") as h:
        inner = h.post("/v1/grants", json={**onward, "owner": "c-lighting", "consumer": "c-roads",
                                           "purpose": "roads see lamps"})  # fmt: skip
    assert inner.json()["status"] == "active"
    with region.http("c-roads") as h:
        onward_grant = h.post("/v1/grants", json={**onward, "owner": "c-roads",
                                                  "consumer": "c-analysts"})  # fmt: skip
    assert onward_grant.status_code == 403
    assert onward_grant.json()["reason"] == "redistribution_prohibited"
    assert "may not be granted onward" in onward_grant.json()["detail"]
    with region.http("c-analysts") as h:
        request = h.post("/v1/grants", json={**onward, "owner": "c-roads",
                                             "consumer": "c-analysts"})  # fmt: skip
    assert request.status_code == 201
    r = post(region, "c-roads", f"/v1/grants/{request.json()['id']}/approve")
    assert (r.status_code, r.json()["reason"]) == (403, "redistribution_prohibited")


def test_an_import_colliding_with_another_organisations_device_names_the_line_only(
    region: Town,
) -> None:
    p = region.prefix
    csv = (
        "device_id,device_type,service,district\n"
        f"{p}c-lamp9,streetlight,c-lighting,bourg\n"
        f"{p}lamp-n1,streetlight,c-lighting,bourg\n"
    )
    with (
        psycopg.connect(region.db_url, autocommit=True) as conn,
        pytest.raises(RegistryImportError) as refused,
    ):
        register_devices(conn, parse_csv(csv), actor=ACTOR, organisation="commune")
    message = str(refused.value)
    assert refused.value.problems[0][0] == 3
    assert f"device id '{p}lamp-n1' is already registered on this platform" in message
    assert "city" not in message and "lighting'" not in message.replace("c-lighting", "")
    with psycopg.connect(region.db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT service FROM devices WHERE device_id = %s", (f"{p}lamp-n1",)
        ).fetchone()
        assert row == ("lighting",)
        assert conn.execute(
            "SELECT count(*) FROM devices WHERE device_id = %s", (f"{p}c-lamp9",)
        ).fetchone() == (0,)
        # A service of another organisation cannot be named either.
        with pytest.raises(RegistryImportError, match="not a service of commune"):
            register_devices(
                conn, [new_record(f"{p}c-x", "streetlight", "lighting")], actor=ACTOR,
                organisation="commune",
            )  # fmt: skip


def test_governed_sql_shows_another_organisations_readings_only_under_a_signed_contract(
    region: Town,
) -> None:
    with psycopg.connect(region.db_url, autocommit=True) as conn:
        ensure_roles(conn)
    url = region.db_url.replace("postgresql://postgres@", "postgresql://grafana_c-analysts@", 1)

    def visible() -> set[str]:
        with psycopg.connect(url, autocommit=True) as viewer:
            rows = viewer.execute(
                "SELECT DISTINCT device_id FROM readings_streetlight WHERE power_w IS NOT NULL"
            ).fetchall()
        return {r[0] for r in rows}

    assert visible() == set()
    gid = contract(region)["id"]
    assert visible() == set()
    assert post(region, "data-office", f"/v1/grants/{gid}/approve").status_code == 200
    assert visible() == set()  # approved by the owner, not yet accepted
    assert post(region, "c-office", f"/v1/grants/{gid}/accept").status_code == 200
    p = region.prefix
    assert visible() == {f"{p}lamp-n1", f"{p}lamp-s1"}


def test_flows_show_a_coordinator_what_leaves_and_enters_its_organisation(region: Town) -> None:
    gid = contract(region)["id"]
    assert post(region, "data-office", f"/v1/grants/{gid}/approve").status_code == 200
    assert post(region, "c-office", f"/v1/grants/{gid}/accept").status_code == 200
    with region.http("c-analysts") as h:
        got = h.get("/v1/history", params={"grant_id": gid, "start": START}).json()["readings"]
        h.get("/v1/history", params={"grant_id": gid, "start": START})
    with region.http("data-office") as h:
        out = h.get("/v1/flows").json()
    with region.http("c-office") as h:
        inbound = h.get("/v1/flows", params={"direction": "in"}).json()
    with region.http("s-office") as h:
        none = h.get("/v1/flows").json()
    with region.http("c-analysts") as h:
        refused = h.get("/v1/flows")
    mine = [f for f in out if f["grant_id"] == gid]
    assert len(mine) == 1
    assert (mine[0]["direction"], mine[0]["consumer_org"], mine[0]["purpose"]) == (
        "out", "commune", "lighting benchmark",
    )  # fmt: skip
    assert (mine[0]["readings"], mine[0]["requests"]) == (2 * len(got), 2)
    assert [(f["grant_id"], f["direction"], f["readings"]) for f in inbound] == [
        (gid, "in", 2 * len(got))
    ]
    assert none == []
    assert (refused.status_code, refused.json()["reason"]) == (403, "not_coordinator")


# -- the isolation matrix --------------------------------------------------------------------

# What a path parameter names, and which of the city's objects to put there (`path`: a
# SensorThings resource path, all of which one route parses).
PARAMS = {"grant_id", "sub_id", "device_id", "path"}


def test_every_route_refuses_another_organisations_data_without_a_grant(region: Town) -> None:
    """Built from the API's route table: a route added tomorrow is in this matrix, and a path
    parameter it does not know fails the test until the matrix learns it."""
    p = region.prefix
    internal = region.grant("mobility", consumer="planning", device_types=["traffic_light"])
    with region.http("planning") as h:
        sub = h.post("/v1/subscriptions", json={"grant_id": internal["id"], "delivery": "sse"})
    assert sub.status_code == 201, sub.text
    ids = {"grant_id": str(internal["id"]), "sub_id": sub.json()["id"], "device_id": f"{p}lamp-n1",
           "path": f"Things('{p}lamp-n1')"}  # fmt: skip
    city_marks = re.compile(
        "|".join(re.escape(x) for x in (f"{p}lamp-", f"{p}tl-", f"{p}m-", sub.json()["id"]))
    )
    # The route table as the API publishes it (every route, with its methods).
    table = region.app.openapi()["paths"]
    routes = [(path, m.upper()) for path, ops in table.items()
              if path.startswith(("/v1", "/sta/")) for m in ops]  # fmt: skip
    assert len(routes) >= 20
    checked = []
    for route_path, method in routes:
        names = set(re.findall(r"{(\w+)}", route_path))
        assert names <= PARAMS, f"{route_path}: the isolation matrix does not know {names - PARAMS}"
        path = route_path
        for name in names:
            path = path.replace("{" + name + "}", ids[name])
        for who in ("c-office", "c-analysts", "c-lighting", "s-office"):
            with region.http(who) as h:
                r = h.request(method, path, params={"start": START}, json={})
            checked.append((method, route_path, who, r.status_code))
            if names:
                # Another organisation's object is not there (404) or not the caller's.
                assert r.status_code in (403, 404, 409, 422), (method, path, who, r.text)
            else:
                assert r.status_code != 500, (method, path, who, r.text)
            # An error may echo the id the caller sent; nothing else of the city's may show.
            text = r.text
            for name in names:
                text = text.replace(ids[name], "")
            assert not city_marks.search(text), (method, path, who, r.text[:300])
    assert len(checked) == 4 * len(routes)
    # Nothing the matrix sent changed the city's grant or subscription.
    with region.http("planning") as h:
        assert h.get(f"/v1/grants/{internal['id']}").json()["status"] == "active"
        assert h.get(f"/v1/subscriptions/{sub.json()['id']}").json()["status"] == "active"
