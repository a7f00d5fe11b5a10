"""The SensorThings API (`/sta/v1.1`) against the running town: what a caller may see is what
it owns or is granted raw, nothing else exists for it, and Observations page, filter and order
exactly the stored readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import requests
from frost_sta_client.service.auth_handler import AuthHandler  # type: ignore[import-untyped]
from frost_sta_client.service.sensorthingsservice import (  # type: ignore[import-untyped]
    SensorThingsService,
)

from tests.streams.conftest import Town

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
STA = "/sta/v1.1"


def get(town: Town, who: str, path: str, **params: str) -> httpx.Response:
    with town.http(who) as h:
        return h.get(STA + path, params=params)


def ids(body: dict[str, Any]) -> list[str]:
    return [x["@iot.id"] for x in body["value"]]


def refusals(town: Town, who: str) -> list[str]:
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT detail->>'path' FROM audit_log WHERE action = 'sta.refused' AND actor = %s"
            " ORDER BY id",
            (who,),
        ).fetchall()
    return [r[0] for r in rows]


def test_the_service_root_lists_the_entity_sets_and_conformance(town: Town) -> None:
    r = get(town, "planning", "")
    assert r.status_code == 200, r.text
    body = r.json()
    names = {x["name"]: x["url"] for x in body["value"]}
    assert set(names) == {"Things", "Locations", "Datastreams", "Sensors",
                          "ObservedProperties", "Observations", "FeaturesOfInterest"}  # fmt: skip
    assert names["Things"] == f"{town.base}{STA}/Things"
    conformance = body["serverSettings"]["conformance"]
    assert "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel" in conformance
    with httpx.Client(base_url=town.base) as h:
        assert h.get(STA + "/Things").status_code == 401
        basic = h.get(STA + "/Things", auth=("anyone", town.tokens["lighting"]))
        assert ids(basic.json()) == [f"{town.prefix}lamp-{x}" for x in ("n1", "n2", "s1")]
        wrong = h.get(STA + "/Things", auth=("lighting", "sbk_" + "x" * 43))
        odd = h.get(STA + "/Things", headers={"Authorization": "Basic not-base64!"})
    assert (wrong.status_code, wrong.json()["reason"]) == (401, "unknown_token")
    assert (odd.status_code, odd.json()["reason"]) == (401, "malformed_token")


def test_things_are_what_the_caller_owns_or_is_granted_and_nothing_else(town: Town) -> None:
    p = town.prefix
    lamps = [f"{p}lamp-n1", f"{p}lamp-n2", f"{p}lamp-s1"]
    assert ids(get(town, "lighting", "/Things").json()) == lamps
    assert ids(get(town, "planning", "/Things").json()) == []
    town.grant("lighting", consumer="planning", device_types=["streetlight"],
               districts=["north"], metrics=["power_w"])  # fmt: skip
    seen = get(town, "planning", "/Things", **{"$count": "true"}).json()
    assert ids(seen) == lamps[:2]
    assert seen["@iot.count"] == 2
    thing = seen["value"][0]
    assert thing["@iot.selfLink"] == f"{town.base}{STA}/Things('{p}lamp-n1')"
    assert thing["properties"] == {"organisation": "city", "service": "lighting",
                                   "district": "north", "device_type": "streetlight"}  # fmt: skip
    assert thing["Datastreams@iot.navigationLink"].endswith(f"Things('{p}lamp-n1')/Datastreams")
    # Only the granted metric is a Datastream of the grantee's; the owner has all three.
    got = get(town, "planning", f"/Things('{p}lamp-n1')/Datastreams").json()
    assert ids(got) == [f"{p}lamp-n1:power_w"]
    own = ids(get(town, "lighting", f"/Things('{p}lamp-n1')/Datastreams").json())
    assert own == [f"{p}lamp-n1:{m}" for m in ("dim_level", "lamp_on", "power_w")]

    # Outside the grant, another service's device and a device that does not exist: one 404.
    outside = get(town, "planning", f"/Things('{p}lamp-s1')")
    foreign = get(town, "environment", f"/Things('{p}lamp-n1')")
    missing = get(town, "planning", f"/Things('{p}nothing')")
    for r in (outside, foreign, missing):
        assert r.status_code == 404, r.text
        assert r.json()["reason"] == "not_found"
    assert get(town, "planning", f"/Datastreams('{p}lamp-n1:dim_level')").status_code == 404
    assert (
        get(town, "planning", f"/Datastreams('{p}lamp-s1:power_w')/Observations").status_code == 404
    )
    assert ids(get(town, "environment", "/Things").json()) == [f"{p}air-n1"]
    assert refusals(town, "planning") == [
        f"{STA}/Things('{p}lamp-s1')", f"{STA}/Things('{p}nothing')",
        f"{STA}/Datastreams('{p}lamp-n1:dim_level')",
        f"{STA}/Datastreams('{p}lamp-s1:power_w')/Observations",
    ]  # fmt: skip
    assert refusals(town, "environment") == [f"{STA}/Things('{p}lamp-n1')"]


def test_navigation_between_things_datastreams_observations_and_the_rest(town: Town) -> None:
    p = town.prefix
    at = NOW - timedelta(minutes=5)
    town.write("streetlight", [(at, f"{p}lamp-n1", 1, 60.0, 42.5)])
    ds = get(town, "lighting", f"/Datastreams('{p}lamp-n1:power_w')").json()
    assert ds["unitOfMeasurement"]["symbol"] == "W"
    assert ds["observationType"].endswith("OM_Measurement")
    thing = get(town, "lighting", f"/Datastreams('{p}lamp-n1:power_w')/Thing").json()
    assert thing["@iot.id"] == f"{p}lamp-n1"
    sensor = get(town, "lighting", f"/Datastreams('{p}lamp-n1:power_w')/Sensor").json()
    assert sensor["@iot.id"] == "streetlight"
    prop = get(town, "lighting", f"/Datastreams('{p}lamp-n1:power_w')/ObservedProperty").json()
    assert (prop["@iot.id"], prop["name"]) == ("streetlight:power_w", "power_w")
    obs = get(town, "lighting", f"/Datastreams('{p}lamp-n1:power_w')/Observations").json()
    assert [(o["phenomenonTime"], o["result"]) for o in obs["value"]] == [
        (at.isoformat().replace("+00:00", "Z"), 42.5)
    ]
    truth = get(town, "lighting", f"/Datastreams('{p}lamp-n1:lamp_on')/Observations").json()
    assert truth["value"][0]["result"] is True
    one = obs["value"][0]
    self_path = one["@iot.selfLink"].removeprefix(town.base + STA)
    assert get(town, "lighting", self_path).json() == one
    back = get(town, "lighting", self_path + "/Datastream").json()
    assert back["@iot.id"] == f"{p}lamp-n1:power_w"
    loc = get(town, "lighting", f"/Things('{p}lamp-n1')/Locations").json()["value"]
    assert loc[0]["location"] == {"type": "Point", "coordinates": [4.1, 50.1]}
    assert ids(get(town, "lighting", f"/Locations('{p}lamp-n1')/Things").json()) == [f"{p}lamp-n1"]
    assert ids(get(town, "lighting", "/Sensors").json()) == ["streetlight"]
    sensed = ids(get(town, "lighting", "/Sensors('streetlight')/Datastreams").json())
    assert len(sensed) == 9  # three lamps, three metrics
    # Another service sees none of it, by any of those paths.
    for path in (f"/Datastreams('{p}lamp-n1:power_w')/Thing", self_path,
                 self_path + "/Datastream", "/Sensors('streetlight')"):  # fmt: skip
        assert get(town, "mobility", path).status_code == 404, path


def test_expand_puts_the_related_entities_inline_under_the_same_grant(town: Town) -> None:
    p = town.prefix
    town.grant("lighting", consumer="planning", device_types=["streetlight"],
               districts=["north"], metrics=["power_w"])  # fmt: skip
    things = get(town, "planning", "/Things", **{"$expand": "Datastreams,Locations"}).json()
    assert ids(things) == [f"{p}lamp-n1", f"{p}lamp-n2"]
    for thing in things["value"]:
        assert [d["@iot.id"] for d in thing["Datastreams"]] == [f"{thing['@iot.id']}:power_w"]
        assert thing["Locations"][0]["location"]["type"] == "Point"
    one = get(town, "planning", f"/Things('{p}lamp-n2')",
              **{"$expand": "Datastreams", "$select": "name"}).json()  # fmt: skip
    assert set(one) == {"name", "Datastreams"}
    ds = get(town, "planning", "/Datastreams",
             **{"$expand": "Thing,Sensor,ObservedProperty", "$top": "1"}).json()  # fmt: skip
    first = ds["value"][0]
    assert (first["Thing"]["@iot.id"], first["Sensor"]["@iot.id"]) == (f"{p}lamp-n1", "streetlight")
    assert first["ObservedProperty"]["name"] == "power_w"
    assert "@iot.nextLink" in ds
    # No traffic lights are granted: their Things have none to expand, nor exist.
    assert (
        get(town, "planning", f"/Things('{p}tl-n1')", **{"$expand": "Datastreams"}).status_code
        == 404
    )


def test_a_reading_is_about_the_place_its_device_stands(town: Town) -> None:
    p = town.prefix
    town.write("streetlight", [(NOW, f"{p}lamp-n1", 1, 20.0, 30.0)])
    town.write("traffic_light", [(NOW, f"{p}tl-n1", 2, 4)])
    lamps = get(town, "lighting", "/FeaturesOfInterest").json()
    assert ids(lamps) == [f"{p}lamp-n1", f"{p}lamp-n2", f"{p}lamp-s1"]
    assert lamps["value"][0]["feature"] == {"type": "Point", "coordinates": [4.1, 50.1]}
    about = get(town, "lighting", f"/FeaturesOfInterest('{p}lamp-n1')/Observations").json()
    assert sorted(o["result"] for o in about["value"]) == [True, 20.0, 30.0]
    one = about["value"][0]["@iot.selfLink"].removeprefix(town.base + STA)
    foi = get(town, "lighting", one + "/FeatureOfInterest").json()
    assert foi["@iot.id"] == f"{p}lamp-n1"
    # A device with no position: its district, with no geometry.
    signal = get(town, "mobility", f"/FeaturesOfInterest('{p}tl-n1')").json()
    assert signal["feature"]["geometry"] is None
    assert signal["feature"]["properties"] == {"district": "north"}
    for path in (f"/FeaturesOfInterest('{p}lamp-n1')", one + "/FeatureOfInterest",
                 f"/FeaturesOfInterest('{p}lamp-n1')/Observations"):  # fmt: skip
        assert get(town, "mobility", path).status_code == 404, path


def test_paging_by_next_link_returns_exactly_the_stored_readings(town: Town) -> None:
    p = town.prefix
    stored = [(NOW - timedelta(seconds=3 * i), float(i % 997)) for i in range(1234)]
    town.write("streetlight", [(t, f"{p}lamp-n2", None, None, v) for t, v in stored])
    town.write("streetlight", [(NOW, f"{p}lamp-n1", None, None, 5.0)])  # another Thing's
    town.grant("lighting", consumer="planning", device_types=["streetlight"])
    url = f"{town.base}{STA}/Datastreams('{p}lamp-n2:power_w')/Observations?$top=500&$count=true"
    got: list[tuple[str, float]] = []
    pages = 0
    with town.http("planning") as h:
        while url:
            r = h.get(url)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["@iot.count"] == len(stored)
            got += [(o["phenomenonTime"], o["result"]) for o in body["value"]]
            url = body.get("@iot.nextLink", "")
            pages += 1
    assert pages == 3
    want = sorted((t.isoformat().replace("+00:00", "Z"), v) for t, v in stored)
    assert got == want
    # The default page and the server's maximum.
    first = get(town, "planning", f"/Datastreams('{p}lamp-n2:power_w')/Observations")
    assert len(first.json()["value"]) == 100
    assert "$skip=100" in first.json()["@iot.nextLink"]
    too_many = get(town, "planning", f"/Datastreams('{p}lamp-n2:power_w')/Observations",
                   **{"$top": "1001"})  # fmt: skip
    assert (too_many.status_code, too_many.json()["reason"]) == (400, "bad_query_option")


def test_sensorthings_and_history_read_the_same_rows_under_one_grant(town: Town) -> None:
    p = town.prefix
    rows = [(NOW - timedelta(minutes=i), d, None, None, float(i))
            for i in range(30) for d in (f"{p}lamp-n1", f"{p}lamp-s1")]  # fmt: skip
    town.write("streetlight", rows)
    grant = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                       districts=["north"], metrics=["power_w"])  # fmt: skip
    start = (NOW - timedelta(hours=1)).isoformat()
    with town.http("planning") as h:
        history = h.get(
            "/v1/history",
            params={
                "grant_id": grant["id"],
                "start": start,
                "end": (NOW + timedelta(seconds=1)).isoformat(),
            },
        )
    assert history.status_code == 200, history.text
    want = {(r["device_id"], r["time"].replace("+00:00", "Z"), r["value"])
            for r in history.json()["readings"]}  # fmt: skip
    got = set()
    for thing in ids(get(town, "planning", "/Things").json()):
        path = f"/Datastreams('{thing}:power_w')/Observations"
        for o in get(town, "planning", path, **{"$top": "1000"}).json()["value"]:
            got.add((thing, o["phenomenonTime"], o["result"]))
    assert got == want
    assert len(got) == 30  # lamp-n1's; lamp-s1 stands outside the grant


def test_the_observations_collection_is_every_granted_reading_once(town: Town) -> None:
    p = town.prefix
    t = [NOW - timedelta(minutes=m) for m in range(6)]
    town.write("streetlight", [(t[i], d, 1, 50.0, float(i)) for i in range(6)
                               for d in (f"{p}lamp-n1", f"{p}lamp-s1")])  # fmt: skip
    town.write("traffic_light", [(t[0], f"{p}tl-n1", 2, 9)])
    # Two grants that overlap on lamp-n1's power: each reading is still one Observation.
    town.grant("lighting", consumer="planning", device_types=["streetlight"],
               districts=["north"], metrics=["power_w"])  # fmt: skip
    town.grant("lighting", consumer="planning", device_types=["streetlight"],
               metrics=["power_w"], purpose="street works")  # fmt: skip
    url = f"{town.base}{STA}/Observations?$top=5"
    got = []
    with town.http("planning") as h:
        while url:
            body = h.get(url).json()
            got += [o["@iot.id"].removeprefix(p) for o in body["value"]]
            url = body.get("@iot.nextLink", "")
    want = sorted((at, d) for at in t for d in ("lamp-n1", "lamp-s1"))
    assert got == [f"{d}:power_w:{int(at.timestamp()) * 1_000_000}" for at, d in want]
    newest = get(
        town,
        "planning",
        "/Observations",
        **{
            "$orderby": "phenomenonTime desc",
            "$top": "2",
            "$filter": f"phenomenonTime lt {t[1].isoformat().replace('+00:00', 'Z')}",
        },
    )
    assert [o["result"] for o in newest.json()["value"]] == [2.0, 2.0]
    own = get(town, "mobility", "/Observations").json()["value"]
    assert {(o["@iot.id"].split(":")[1], o["result"]) for o in own} == {
        ("phase", 2),
        ("vehicle_count", 9),
    }


def test_observations_filter_and_order_by_time_and_result(town: Town) -> None:
    p = town.prefix
    base = NOW - timedelta(hours=1)
    stored = [(base + timedelta(minutes=i), float(i)) for i in range(20)]
    town.write("streetlight", [(t, f"{p}lamp-s1", None, None, v) for t, v in stored])
    path = f"/Datastreams('{p}lamp-s1:power_w')/Observations"

    def results(**params: str) -> list[float]:
        r = get(town, "lighting", path, **params)
        assert r.status_code == 200, r.text
        return [o["result"] for o in r.json()["value"]]

    t5 = (base + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    t10 = (base + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    assert results(**{"$filter": f"phenomenonTime ge {t5} and phenomenonTime lt {t10}"}) == [
        5.0, 6.0, 7.0, 8.0, 9.0,
    ]  # fmt: skip
    assert results(**{"$filter": "result lt 2 or result gt 17"}) == [0.0, 1.0, 18.0, 19.0]
    assert results(**{"$filter": "not (result ge 3) and result ne 1"}) == [0.0, 2.0]
    assert results(**{"$filter": f"(result le 12) and resultTime gt {t10}"}) == [11.0, 12.0]
    assert results(**{"$orderby": "phenomenonTime desc", "$top": "3"}) == [19.0, 18.0, 17.0]
    assert results(**{"$orderby": "phenomenonTime asc", "$top": "2"}) == [0.0, 1.0]
    desc = get(town, "lighting", path, **{"$orderby": "phenomenonTime desc", "$top": "15"})
    nxt = desc.json()["@iot.nextLink"]
    with town.http("lighting") as h:
        rest = [o["result"] for o in h.get(nxt).json()["value"]]
    assert rest == [4.0, 3.0, 2.0, 1.0, 0.0]
    picked = get(town, "lighting", path, **{"$select": "result", "$top": "1"}).json()
    assert picked["value"] == [{"result": 0.0}]


@pytest.mark.parametrize(
    ("path", "params", "status", "named"),
    [
        ("/Things", {"$expand": "Datastreams($top=1)"}, 501, "$expand"),
        ("/Datastreams", {"$expand": "Observations"}, 501, "Observations"),
        ("/Things", {"$expand": "Colour"}, 400, "Colour"),
        ("/Things", {"$filter": "name eq 'x'"}, 501, "$filter"),
        ("/Things", {"$orderby": "name"}, 501, "$orderby"),
        ("/Things", {"$frobnicate": "1"}, 400, "$frobnicate"),
        ("/Things", {"$select": "colour"}, 400, "colour"),
        ("/Things", {"$top": "-1"}, 400, "$top"),
        ("/Things", {"$resultFormat": "dataArray"}, 501, "$resultFormat"),
        ("/OBS", {"$filter": "substringof('a', result)"}, 501, "substringof"),
        ("/OBS", {"$filter": "result add 1 gt 2"}, 501, "add"),
        ("/OBS", {"$filter": "parameters/x eq 1"}, 501, "parameters/x"),
        ("/OBS", {"$filter": "result gt"}, 400, "$filter"),
        ("/OBS", {"$filter": "(result gt 1"}, 400, "("),
        ("/OBS", {"$filter": "phenomenonTime gt 'yesterday'"}, 400, "$filter"),
        ("/OBS", {"$orderby": "result desc"}, 501, "$orderby"),
        ("/Observations", {"$count": "true"}, 501, "$count"),
        ("/Observations", {"$filter": "result gt 1"}, 501, "result"),
        ("/HistoricalLocations", {}, 501, "HistoricalLocations"),
        ("/Things('x')/HistoricalLocations", {}, 501, "HistoricalLocations"),
        ("/Things('x')/Colours", {}, 404, "Colours"),
        ("/Things('x')/$ref", {}, 501, "$ref"),
        ("/Nonsense", {}, 404, "Nonsense"),
    ],
)
def test_what_is_not_supported_is_refused_by_name(
    town: Town, path: str, params: dict[str, str], status: int, named: str
) -> None:
    path = path.replace("/OBS", f"/Datastreams('{town.prefix}lamp-n1:power_w')/Observations")
    r = get(town, "lighting", path, **params)
    assert r.status_code == status, r.text
    assert named in r.json()["detail"]


def test_odd_requests_get_one_clear_answer_never_a_server_error(town: Town) -> None:
    p = town.prefix
    town.write("streetlight", [(NOW, f"{p}lamp-n1", None, None, 3.0)])
    obs = f"/Datastreams('{p}lamp-n1:power_w')/Observations"
    counted = get(town, "lighting", obs, **{"$top": "0", "$count": "true"}).json()
    assert counted == {"@iot.count": 1, "value": []}
    beyond = get(town, "lighting", obs, **{"$skip": "5", "$count": "true"}).json()
    assert beyond == {"@iot.count": 1, "value": []}
    things = get(town, "lighting", "/Things", **{"$top": "0", "$count": "true"}).json()
    assert things == {"@iot.count": 3, "value": []}
    odd = [
        (f"/Observations('{p}lamp-n1:power_w:999999999999999999')", 404),
        (f"/Observations('{p}lamp-n1:power_w:soon')", 404),
        ("/Things('a%00b')", 404),
        ("/Things(", 404),
        ("/Things(lamp)", 400),
        ("/", 404),
    ]
    for path, status in odd:
        r = get(town, "lighting", path)
        assert (r.status_code, path) == (status, path), r.text
        assert r.json()["detail"]
    r = get(town, "lighting", obs, **{"$filter": "phenomenonTime gt 2026-13-45T00:00:00Z"})
    assert (r.status_code, r.json()["reason"]) == (400, "bad_filter")


def test_an_aggregate_grant_yields_no_raw_observation_by_any_url(town: Town) -> None:
    p = town.prefix
    town.write("traffic_light", [(NOW - timedelta(minutes=1), f"{p}tl-n1", 2, 7)])
    town.grant("mobility", consumer="planning", device_types=["traffic_light"],
               granularity="aggregate", interval="1h", pool="device")  # fmt: skip
    own = get(town, "mobility", f"/Datastreams('{p}tl-n1:vehicle_count')/Observations").json()
    obs_id = own["value"][0]["@iot.id"]
    assert ids(get(town, "planning", "/Things").json()) == []
    assert ids(get(town, "planning", "/Datastreams").json()) == []
    assert ids(get(town, "planning", "/Sensors").json()) == []
    paths = [f"/Things('{p}tl-n1')", f"/Things('{p}tl-n1')/Datastreams",
             f"/Datastreams('{p}tl-n1:vehicle_count')",
             f"/Datastreams('{p}tl-n1:vehicle_count')/Observations",
             f"/Observations('{obs_id}')", f"/Observations('{obs_id}')/Datastream"]  # fmt: skip
    for path in paths:
        r = get(town, "planning", path)
        assert r.status_code == 404, (path, r.text)


# frost-sta-client 1.1 still calls furl's deprecated `pathstr` on every request.
@pytest.mark.filterwarnings("ignore:furl.pathstr is deprecated:DeprecationWarning")
def test_an_independent_client_lists_filters_and_pages_exactly_what_is_granted(
    town: Town,
) -> None:
    p = town.prefix
    stored = [(NOW - timedelta(seconds=2 * i), float(i % 50)) for i in range(1100)]
    town.write("streetlight", [(t, f"{p}lamp-n1", None, None, v) for t, v in stored])
    town.write("streetlight", [(NOW, f"{p}lamp-s1", None, None, 1.0)])
    town.grant("lighting", consumer="planning", device_types=["streetlight"],
               districts=["north"])  # fmt: skip
    # It knows basic auth only: the token goes as the password.
    basic = AuthHandler(username="planning", password=town.tokens["planning"])
    service = SensorThingsService(town.base + STA, auth_handler=basic)
    things = list(service.things().query().expand("Locations").list())
    assert [t.id for t in things] == [f"{p}lamp-n1", f"{p}lamp-n2"]
    assert [loc.id for loc in things[0].locations] == [f"{p}lamp-n1"]
    streams = list(things[0].get_datastreams().query().list())
    assert [d.id for d in streams] == [
        f"{p}lamp-n1:{m}" for m in ("dim_level", "lamp_on", "power_w")
    ]
    power = service.datastreams().find(f"{p}lamp-n1:power_w")
    assert power.unit_of_measurement.symbol == "W"
    query = power.get_observations().query().top(1000).orderby("phenomenonTime", "asc")
    got = [(o.phenomenon_time, o.result) for o in query.list()]
    assert len(got) == len(stored)
    assert [r for _, r in got] == [v for _, v in sorted(stored)]
    high = power.get_observations().query().filter("result ge 48 and not (result eq 49)")
    assert {o.result for o in high.list()} == {48.0}
    newest = power.get_observations().query().top(2).orderby("phenomenonTime", "desc").list()
    assert [o.result for o in newest.entities] == [0.0, 1.0]
    with pytest.raises(requests.HTTPError) as refused:
        service.things().find(f"{p}lamp-s1")
    assert refused.value.response.status_code == 404
