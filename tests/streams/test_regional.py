"""Regional pooling: one read over the grants of several municipalities.

A regional energy syndicate holds district-pooled meter contracts from the city and from a
neighbouring commune, each with its own pool minimum. Its regional read must equal what the
raw readings give under the rule: district pools (an inter-communal district mixes both
owners' devices under the stricter minimum), organisation totals and the regional total, a
total released only if the districts it suppressed together meet its minimum.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from devices.registry import new_record
from silobreak.local import LocalMosquitto
from store.lifecycle import register_devices
from store.organisations import add_organisation, offer_stream
from store.principals import add_principal, issue_token
from store.sql_roles import ensure_roles
from tests.streams.conftest import ACTOR, Town, running_town

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
BUCKET = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 2 * HOUR
# The two owners' minimums (the platform's is 5).
MINIMUM = {"city": 5, "commune": 6}


@pytest.fixture
def syndicate(db_url: str, device_prefix: str, mqtt_broker: LocalMosquitto) -> Iterator[Town]:
    """City meters (north 6, south 3, lisiere 2), commune meters (bourg 3, lisiere 2), one
    reading each in one sealed hour, and the syndicate's two signed pooled contracts."""
    with running_town(db_url, device_prefix, mqtt_broker) as town:
        p = town.prefix
        city_more = [
            new_record(f"{p}m-s2", "meter", district="south"),
            *(new_record(f"{p}m-l{i}", "meter", district="lisiere") for i in range(2)),
        ]
        commune = [
            *(new_record(f"{p}cm-b{i}", "meter", "c-energy", district="bourg") for i in range(3)),
            *(new_record(f"{p}cm-l{i}", "meter", "c-energy", district="lisiere")
              for i in range(2)),
        ]  # fmt: skip
        with psycopg.connect(db_url, autocommit=True) as conn:
            add_organisation(conn, "commune", "municipality", actor=ACTOR)
            add_organisation(conn, "syndicate", "syndicate", actor=ACTOR)
            register_devices(conn, city_more, actor=ACTOR, organisation="city")
            for name, kind, org in (
                ("c-energy", "service", "commune"), ("c-office", "coordinator", "commune"),
                ("s-office", "coordinator", "syndicate"), ("s-energy", "team", "syndicate"),
            ):  # fmt: skip
                add_principal(conn, name, kind, organisation=org, actor=ACTOR)
                town.tokens[name] = issue_token(
                    conn, name, ttl=timedelta(days=1), actor=ACTOR
                ).token
            register_devices(conn, commune, actor=ACTOR, organisation="commune")
            offer_stream(conn, "energy", "meter", actor=ACTOR)
            offer_stream(conn, "c-energy", "meter", actor=ACTOR)
        for r in (*city_more, *commune):
            town.devices[r.device_id] = (r.device_type, r.service, r.district or "")
        meters = sorted(d for d, (t, _, _) in town.devices.items() if t == "meter")
        town.write(
            "meter",
            [(BUCKET + timedelta(minutes=5 + i), d, 1000.0 + i, float(i + 1))
             for i, d in enumerate(meters)],
        )  # fmt: skip
        for owner, office, org in (("energy", "data-office", "city"),
                                   ("c-energy", "c-office", "commune")):  # fmt: skip
            with town.http("s-energy") as h:
                asked = h.post("/v1/grants", json={
                    "owner": owner, "consumer": "s-energy", "device_types": ["meter"],
                    "granularity": "aggregate", "interval": "1h", "pool": "district",
                    "min_devices": MINIMUM[org], "purpose": "regional energy balance",
                    "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
                })  # fmt: skip
            assert asked.status_code == 201, asked.text
            gid = asked.json()["id"]
            with town.http(office) as h:
                assert h.post(f"/v1/grants/{gid}/approve", json={}).status_code == 200
            with town.http("s-office") as h:
                assert h.post(f"/v1/grants/{gid}/accept", json={}).json()["status"] == "active"
        yield town


def expected(town: Town, metric: str, values: dict[str, float]) -> set[tuple[Any, ...]]:
    """The rule, computed from the raw readings: (level, organisations, district, sum,
    count, devices) of every released row."""
    org_of = {"energy": "city", "c-energy": "commune"}
    pools: dict[str, list[tuple[str, float]]] = defaultdict(list)  # district -> (org, value)
    for device, (device_type, service, district) in town.devices.items():
        if device_type == "meter" and device in values:
            pools[district].append((org_of[service], values[device]))
    out: set[tuple[Any, ...]] = set()
    suppressed: dict[str, bool] = {}
    for district, members in pools.items():
        names = sorted({o for o, _ in members})
        least = max(MINIMUM[o] for o in names)
        suppressed[district] = len(members) < least
        if not suppressed[district]:
            out.add(("district", tuple(names), district, round(sum(v for _, v in members), 6),
                     len(members), len(members)))  # fmt: skip
    totals = {org: [(d, v) for d, ms in pools.items() for o, v in ms if o == org]
              for org in MINIMUM}  # fmt: skip
    totals["region"] = [(d, v) for d, ms in pools.items() for _, v in ms]
    for name, members in totals.items():
        orgs: tuple[str, ...] = tuple(sorted(MINIMUM)) if name == "region" else (name,)
        least = max(MINIMUM[o] for o in orgs)
        hidden = sum(1 for d, _ in members if suppressed[d])
        if len(members) >= least and (hidden == 0 or hidden >= least):
            level = "region" if name == "region" else "organisation"
            total = round(sum(v for _, v in members), 6)
            out.add((level, orgs, None, total, len(members), len(members)))
    assert metric == "flow"
    return out


def test_a_regional_read_equals_the_rule_applied_to_the_raw_readings(syndicate: Town) -> None:
    params = {"device_type": "meter", "interval": "1h", "metric": "flow",
              "start": BUCKET.isoformat(), "end": (BUCKET + HOUR).isoformat()}  # fmt: skip
    with syndicate.http("s-energy") as h:
        r = h.get("/v1/regional", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    got = {
        (row["level"], tuple(row["organisations"]), row["district"], round(row["sum"], 6),
         row["count"], row["devices"])
        for row in body["rows"]
    }  # fmt: skip
    meters = sorted(d for d, (t, _, _) in syndicate.devices.items() if t == "meter")
    values = {d: float(i + 1) for i, d in enumerate(meters)}
    want = expected(syndicate, "flow", values)
    assert got == want
    # The shape this town gives, so the rule is exercised, not only mirrored: north is shown;
    # south, bourg and the inter-communal lisiere (4 devices, minimum 6) are suppressed; the
    # city's total hides 5 devices (>= 5) and is shown; the commune's 5 devices are below its
    # 6; the region hides 10 (>= 6) and is shown.
    assert {(lv, d) for lv, _, d, *_ in got} == {
        ("district", "north"),
        ("organisation", None),
        ("region", None),
    }
    assert {orgs for lv, orgs, *_ in got if lv == "organisation"} == {("city",)}
    # Subtracting the released districts from a released total never isolates a pool.
    districts = {d: n for lv, _, d, _, _, n in got if lv == "district"}
    for lv, orgs, _, _, _, n in got:
        if lv != "district":
            rest = n - sum(districts.values()) if lv == "region" else n - districts["north"]
            assert rest == 0 or rest >= max(MINIMUM[o] for o in orgs)
    assert {t["owner_org"] for t in body["terms"]} == {"city", "commune"}
    # Each owner's coordinator sees the read in its data flows.
    for office in ("data-office", "c-office"):
        with syndicate.http(office) as h:
            flows = h.get("/v1/flows", params={"direction": "out"}).json()
        assert [f["consumer_org"] for f in flows] == ["syndicate"]


def test_governed_sql_shows_the_syndicate_exactly_the_regional_rows(syndicate: Town) -> None:
    params = {"device_type": "meter", "interval": "1h",
              "start": BUCKET.isoformat(), "end": (BUCKET + HOUR).isoformat()}  # fmt: skip
    with syndicate.http("s-energy") as h:
        api = h.get("/v1/regional", params=params).json()["rows"]
    with psycopg.connect(syndicate.db_url, autocommit=True) as conn:
        ensure_roles(conn)
    url = syndicate.db_url.replace("postgresql://postgres@", "postgresql://grafana_s-energy@", 1)
    with psycopg.connect(url, autocommit=True) as viewer:
        rows = viewer.execute(
            "SELECT level, organisations, district, metric, sum, count, devices"
            " FROM regional_pools('meter', '1 hour', %s, %s)",
            (BUCKET, BUCKET + HOUR),
        ).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            viewer.execute(
                "SELECT * FROM public.silobreak_regional_pools('planning', 'meter', '1 hour',"
                " %s, %s, 1)",
                (BUCKET, BUCKET + HOUR),
            )
    assert sorted(
        (
            r["level"],
            tuple(r["organisations"]),
            r["district"],
            r["metric"],
            round(r["sum"], 6),
            r["count"],
            r["devices"],
        )
        for r in api
    ) == sorted((lv, tuple(o), d, m, round(s, 6), c, n) for lv, o, d, m, s, c, n in rows)
    assert rows
    # Another principal's role sees none of it.
    other = syndicate.db_url.replace("postgresql://postgres@", "postgresql://grafana_planning@", 1)
    with psycopg.connect(other, autocommit=True) as viewer:
        assert viewer.execute(
            "SELECT count(*) FROM regional_pools('meter', '1 hour', %s, %s)",
            (BUCKET, BUCKET + HOUR),
        ).fetchone() == (0,)
        # Nor by shadowing the table that says who it is with a temporary one of its own.
        viewer.execute("CREATE TEMP TABLE sql_viewers (role text, principal text)")
        viewer.execute("INSERT INTO sql_viewers VALUES (session_user, 's-energy')")
        assert viewer.execute(
            "SELECT count(*) FROM regional_pools('meter', '1 hour', %s, %s)",
            (BUCKET, BUCKET + HOUR),
        ).fetchone() == (0,)


def test_a_regional_read_without_a_pooled_grant_is_refused(syndicate: Town) -> None:
    with syndicate.http("c-office") as h:
        r = h.get("/v1/regional", params={"device_type": "meter", "interval": "1h",
                                          "start": BUCKET.isoformat()})  # fmt: skip
    assert (r.status_code, r.json()["reason"]) == (403, "no_grant")
    with syndicate.http("s-energy") as h:
        r = h.get("/v1/regional", params={"device_type": "meter", "interval": "15m",
                                          "start": BUCKET.isoformat()})  # fmt: skip
    assert (r.status_code, r.json()["reason"]) == (403, "no_grant")
