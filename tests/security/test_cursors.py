"""Attack 3: a forged cursor to read a grant's whole history (or aggregates from 1970) in one
unbounded query, by `?cursor=`, `Last-Event-ID` or an acknowledgement; and the paging of an
honest catch-up, which must lose and double nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from streams import live
from tests.streams.conftest import Town, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.security]

Event = tuple[str, list[dict[str, Any]]]  # (id, readings)


def forged(created: str) -> list[str]:
    """Cursors a consumer could send back: before its start, from 1970, of another kind,
    in the future, or not snapshots PostgreSQL would take."""
    snap = created[1:]
    xmin, xmax = (int(x) for x in snap.split(":")[:2])
    return [
        "L1:1:",
        "L1:2:1",
        f"L{xmin - 1}:{xmax}:{xmin - 1}",
        f"L{xmax + 1000}:{xmax + 1000}:",  # the future
        "A0",
        "A-62135596800000000",
        f"R{snap}/0/0//",  # a replay from 1970 in the subscription's own snapshot
        f"C1:1:/{snap}/0/0/x",
        f"C{snap}/{xmax + 1000}:{xmax + 1000}:/0/0/x",
        "L10:5:",
        "L5:10:3",
        "L1:99999999999999999999:",
        f"R{snap}/0/-1//",
        "X1",
    ]


def test_a_forged_cursor_is_refused_by_query_header_and_acknowledgement(town: Town) -> None:
    lamp = f"{town.prefix}lamp-n1"
    t0 = datetime.now(UTC) - timedelta(hours=1)
    town.write("streetlight", [(t0 + timedelta(seconds=i), lamp, 1, 50.0, 40.0) for i in range(50)])
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"])
    agg = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                     granularity="aggregate", interval="1m", pool="device")  # fmt: skip
    subs = {}
    with town.http("planning") as h:
        for delivery in ("sse", "webhook", "mqtt"):
            body: dict[str, Any] = {"grant_id": g["id"], "delivery": delivery}
            if delivery == "webhook":
                body["webhook_url"] = f"http://127.0.0.1:{town.hook_port}/hooks/environment/x"
            r = h.post("/v1/subscriptions", json=body)
            assert r.status_code == 201, r.text
            subs[delivery] = r.json()
        r = h.post("/v1/subscriptions", json={"grant_id": agg["id"], "delivery": "sse"})
        assert r.status_code == 201, r.text
        subs["aggregate"] = r.json()

        outcomes: dict[tuple[str, str, str], tuple[int, str]] = {}
        for name, sub in subs.items():
            for text in forged(subs["sse"]["cursor"]) + [subs["sse"]["cursor"]] * (
                name == "aggregate"
            ):
                if name == "aggregate" and text.startswith("A"):
                    continue  # below: watermarks of its own
                for how, r in attempts(h, sub["id"], text, sse=name in ("sse", "aggregate")):
                    outcomes[(name, how, text)] = (r.status_code, r.json().get("reason", ""))
        start = int(subs["aggregate"]["cursor"][1:])
        for text in ("A0", f"A{start - 60_000_000}", "A-1"):
            r = h.post(f"/v1/subscriptions/{subs['aggregate']['id']}/ack", json={"cursor": text})
            outcomes[("aggregate", "ack", text)] = (r.status_code, r.json().get("reason", ""))
        stored = {name: h.get(f"/v1/subscriptions/{s['id']}").json()["cursor"]
                  for name, s in subs.items()}  # fmt: skip
    wrong = {
        k: v
        for k, v in outcomes.items()
        if v[0] != 422 or v[1] not in ("cursor_not_of_subscription", "malformed_cursor")
    }
    assert wrong == {}  # fmt: skip
    assert len(outcomes) > 80
    assert stored == {name: s["cursor"] for name, s in subs.items()}  # no ack moved anything


def test_an_honest_catch_up_is_paged_and_resumes_mid_page_without_loss_or_duplicate(
    town: Town, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "REPLAY_PAGE", 7)  # the gateway runs in this process
    lamps = [f"{town.prefix}lamp-n1", f"{town.prefix}lamp-n2", f"{town.prefix}lamp-s1"]
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"])  # fmt: skip
    with town.http("planning") as h:
        r = h.post("/v1/subscriptions", json={"grant_id": g["id"], "delivery": "sse"})
        assert r.status_code == 201, r.text
        sub = r.json()
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    written = set()
    for batch in range(4):  # four transactions, times interleaved across them
        rows = [(t0 + timedelta(seconds=4 * i + batch), lamp, 1, 50.0, float(100 * batch + i))
                for i in range(5) for lamp in lamps]  # fmt: skip
        town.write("streetlight", rows)
        written |= {(r[1], r[4]) for r in rows}
    assert len(written) == 60
    # The catch-up reads alone up to the hub's position; readings past it come in the hub's
    # own batches, which are not paged. On a busy machine the hub may not have ticked since
    # the writes yet: wait until it has seen them, so the catch-up is what delivers them.
    wait_until(lambda: hub_has_seen(town, lamps), 60, "the hub's position past the writes")

    url = f"{town.base}/v1/subscriptions/{sub['id']}/events"
    events = read_events(town, url, {}, lambda got: seen(got) >= written)
    assert all(len(readings) <= 7 for _, readings in events)
    assert [key(r) for _, rs in events for r in rs] == sorted_unique(events)
    assert seen(events) == written
    middle = next(i for i, (event_id, _) in enumerate(events) if event_id.startswith("C"))
    rest = {key(r) for _, rs in events[middle + 1 :] for r in rs}
    again = read_events(town, url, {"Last-Event-ID": events[middle][0]},
                        lambda got: seen(got) >= rest)  # fmt: skip
    resumed = [key(r) for _, rs in again for r in rs]
    assert len(resumed) == len(set(resumed))  # nothing twice
    assert set(resumed) == rest  # nothing before the cursor, nothing after it missing


def hub_has_seen(town: Town, device_ids: list[str]) -> bool:
    """Whether the streams hub's snapshot shows every committed reading of `device_ids`."""
    position = town.app.state.streams.hub.current
    if position is None:
        return False
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT bool_and(pg_visible_in_snapshot(batch::text::xid8, %s::pg_snapshot))"
            " FROM readings_streetlight WHERE device_id = ANY(%s)",
            (position, device_ids),
        ).fetchone()
    return bool(row and row[0])


def attempts(
    h: httpx.Client, sub_id: str, text: str, *, sse: bool
) -> list[tuple[str, httpx.Response]]:
    """`text` sent back as an acknowledgement and, for SSE, as `?cursor=` and Last-Event-ID."""
    out = [("ack", h.post(f"/v1/subscriptions/{sub_id}/ack", json={"cursor": text}))]
    if sse:
        url = f"/v1/subscriptions/{sub_id}/events"
        out.append(("?cursor=", h.get(url, params={"cursor": text})))
        out.append(("Last-Event-ID", h.get(url, headers={"Last-Event-ID": text})))
    return out


def key(r: dict[str, Any]) -> tuple[str, float]:
    return r["device_id"], r["value"]


def seen(events: list[Event]) -> set[tuple[str, float]]:
    return {key(r) for _, rs in events for r in rs}


def sorted_unique(events: list[Event]) -> list[tuple[str, float]]:
    keys = [key(r) for _, rs in events for r in rs]
    assert len(keys) == len(set(keys)), "a reading delivered twice"
    return keys


def read_events(
    town: Town, url: str, headers: dict[str, str], done: Callable[[list[Event]], bool]
) -> list[Event]:
    """SSE `readings` events of one connection until `done` (or a deadline, which fails)."""
    got: list[Event] = []
    deadline = time.monotonic() + 30
    auth = {"Authorization": f"Bearer {town.tokens['planning']}", **headers}
    with httpx.stream("GET", url, headers=auth, timeout=30) as r:
        assert r.status_code == 200, r.read()
        event_id, kind = "", ""
        for line in r.iter_lines():
            assert time.monotonic() < deadline, f"timed out after {len(got)} events"
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "readings":
                got.append((event_id, json.loads(line[6:])["readings"]))
                if done(got):
                    return got
    raise AssertionError("the stream ended")
