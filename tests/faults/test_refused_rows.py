"""Rows the database refuses for good: their messages are dead-lettered and ingest goes on;
a mistake of the operator's (a table gone, a guard trigger) still holds ingest, as an outage."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from silobreak.local import LocalMosquitto
from silobreak.replay import ReplayLimits, replay_rejects
from store.rejects import RejectFilter
from tests.e2e.harness import (
    IngestProcess,
    fleet,
    messages,
    publish,
    query,
    register,
    wait_for_messages,
    wait_until,
)
from tests.faults.checks import Item, assert_stored_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

StartIngestor = Callable[..., IngestProcess]
BATCH_SIZE = 1000  # tests.e2e.harness.ingest_env
# Values the validator accepts and the test's database refuses, for good.
PM25_REFUSED = 1234.5  # a CHECK constraint: 23514 check_violation
VEHICLES_REFUSED = 4242  # a trigger raising data_exception: 22000
# A guard trigger that names no SQLSTATE (P0001): not a refusal of the row, the batch is held.
VEHICLES_GUARDED = 4343

_REFUSE = f"""
ALTER TABLE readings_air_sensor
    ADD CONSTRAINT pm25_calibration CHECK (pm25 <> {PM25_REFUSED});
CREATE FUNCTION refuse_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.vehicle_count = {VEHICLES_REFUSED} THEN
        RAISE EXCEPTION 'vehicle_count % is a counter fault', NEW.vehicle_count
            USING ERRCODE = 'data_exception';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_count BEFORE INSERT ON readings_traffic_light
    FOR EACH ROW EXECUTE FUNCTION refuse_count();
"""


def body(ts: datetime, metrics: dict[str, Any]) -> bytes:
    return json.dumps({"ts": ts.isoformat().replace("+00:00", "Z"), "metrics": metrics}).encode()


def test_rows_the_database_refuses_are_dead_lettered_and_ingest_goes_on(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(_REFUSE)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    good = messages(records, per_device=100, end=end)  # 4,000, one a second per device
    air, light = f"{device_prefix}air_sensor-003", f"{device_prefix}traffic_light-007"
    # Half-second times: no refused message shares a key with a good one.
    at = [end - timedelta(seconds=s, milliseconds=500) for s in (90, 89, 60, 30, 29)]
    senml = [  # two times, one refused: the whole message is, and neither time is stored
        {"bt": at[3].timestamp(), "n": "pm25", "v": 7},
        {"t": 1, "n": "pm25", "v": PM25_REFUSED},
    ]
    # (device, payload): what the database says, and the readings the message holds.
    refused: dict[tuple[str, bytes], tuple[str, list[tuple[dict[str, Any], datetime]]]] = {
        (air, body(at[0], {"pm25": PM25_REFUSED})): (
            "pm25_calibration",
            [({"pm25": PM25_REFUSED}, at[0])],
        ),
        (air, body(at[1], {"pm25": PM25_REFUSED, "no2": 3})): (
            "pm25_calibration",
            [({"pm25": PM25_REFUSED, "no2": 3}, at[1])],
        ),
        (light, body(at[2], {"vehicle_count": VEHICLES_REFUSED})): (
            "counter fault",
            [({"vehicle_count": VEHICLES_REFUSED}, at[2])],
        ),
        (air, json.dumps(senml).encode()): (
            "pm25_calibration",
            [({"pm25": 7}, at[3]), ({"pm25": PM25_REFUSED}, at[4])],
        ),
    }
    poison = [(f"devices/{device}/telemetry", payload) for device, payload in refused]
    # Spread over the stream, two side by side; a stretch of it is sent twice (a
    # redelivery, in a refused batch: the merge runs in the parts tried).
    stream = [(t, p) for t, p, *_ in good[:1200]]
    stream += [(t, p) for t, p, *_ in good[1100:1200]] + poison[:2]
    stream += [(t, p) for t, p, *_ in good[1200:2600]] + poison[2:3]
    stream += [(t, p) for t, p, *_ in good[2600:3500]] + poison[3:]
    stream += [(t, p) for t, p, *_ in good[3500:]]

    proc = start_ingestor(broker.url, db_url)
    publish(broker.url, stream, f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(good))
    wait_until(lambda: dead_letters(db_url, device_prefix) == len(refused), 30, "dead letters")

    # Each refused message is a dead letter as it came, with the database's own words.
    rows = query(
        db_url,
        "SELECT topic, device_id, reason, detail, payload FROM rejected_messages"
        " WHERE device_id LIKE %s",
        device_prefix + "%",
    )
    by_message = {(r[1], bytes(r[4])): r for r in rows}
    assert set(by_message) == set(refused)
    for (device, payload), (words, _) in refused.items():
        topic, _, reason, detail, _ = by_message[(device, payload)]
        assert (topic, reason) == (f"devices/{device}/telemetry", "store_refused")
        assert words in detail
        code = "22000" if words == "counter fault" else "23514"
        assert detail.endswith(f"(SQLSTATE {code})")
    # Every good message exactly once, those sent after the refused ones too.
    assert_stored_exactly_once(db_url, device_prefix, good, rejected=len(refused))

    # Said once per batch (not per retry or per part tried), with the count it refused.
    lines = [x for x in proc.lines if "for good" in x]
    counts = [int(m[1]) for x in lines if (m := re.search(r"refused (\d+) of \d+ message", x))]
    assert len(counts) == len(lines)
    assert sum(counts) == len(refused)
    assert all("dead-lettered as store_refused" in x for x in lines)
    assert not any("holding" in x for x in proc.lines)
    # Counted: messages by reason, batches, and the parts tried, k·log N at most.
    assert proc.metric('silobreak_ingest_rejected_total{reason="store_refused"}') == len(refused)
    assert proc.metric("silobreak_ingest_refused_batches_total") == len(lines)
    parts = proc.metric("silobreak_ingest_refused_probes_total")
    assert 0 < parts <= 2 * len(refused) * math.ceil(math.log2(BATCH_SIZE))
    assert proc.metric("silobreak_ingest_store_up") == 1

    # Ingest goes on storing, and acknowledged all: a restart under the same client id gets
    # nothing back from the broker.
    later = messages(records, per_device=3, end=datetime.now(UTC).replace(microsecond=0))
    publish(broker.url, [(t, p) for t, p, *_ in later], f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(good) + len(later))
    assert proc.proc.poll() is None
    assert proc.stop() == 0
    assert not any("unacknowledged" in x for x in proc.lines)
    again = start_ingestor(broker.url, db_url)
    time.sleep(2)  # a redelivery comes at once, on connect
    assert again.metric("silobreak_ingest_received_total") == 0
    assert_stored_exactly_once(db_url, device_prefix, good + later, rejected=len(refused))

    # Once the database takes them, a replay stores them, and settles their dead letters.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings_air_sensor DROP CONSTRAINT pm25_calibration")
        conn.execute("DROP TRIGGER refuse_count ON readings_traffic_light")
    replayed = asyncio.run(
        replay_rejects(db_url, RejectFilter(reason="store_refused"), limits=ReplayLimits())
    )
    assert replayed.stored == len(refused)
    now_stored: list[Item] = [
        (f"devices/{device}/telemetry", payload, device, metrics, ts)
        for (device, payload), (_, readings) in refused.items()
        for metrics, ts in readings
    ]
    assert_stored_exactly_once(db_url, device_prefix, good + later + now_stored)


@pytest.mark.parametrize(
    ("mistake", "fix"),
    [
        # 42P01 undefined table: every batch held, whatever it holds.
        (
            "ALTER TABLE readings_meter RENAME TO readings_meter_away",
            "ALTER TABLE readings_meter_away RENAME TO readings_meter",
        ),
        # P0001: a guard trigger that names no SQLSTATE says nothing about the row.
        (
            f"""CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.vehicle_count = {VEHICLES_GUARDED} THEN
                    RAISE EXCEPTION 'vehicle counts are under review';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER guard BEFORE INSERT ON readings_traffic_light
                FOR EACH ROW EXECUTE FUNCTION guard()""",
            "DROP TRIGGER guard ON readings_traffic_light",
        ),
    ],
    ids=["table-renamed", "raise-without-errcode"],
)
def test_a_mistake_of_the_operator_holds_ingest_and_dead_letters_nothing(
    broker: LocalMosquitto,
    db_url: str,
    device_prefix: str,
    start_ingestor: StartIngestor,
    mistake: str,
    fix: str,
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    light = next(r.device_id for r in records if r.device_type == "traffic_light")
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    first = messages(records, per_device=25, end=end - timedelta(seconds=30))
    rest = messages(records, per_device=25, end=end)
    ts = end - timedelta(seconds=30) + timedelta(milliseconds=500)
    guarded: Item = (
        f"devices/{light}/telemetry",
        body(ts, {"vehicle_count": VEHICLES_GUARDED}),
        light,
        {"vehicle_count": VEHICLES_GUARDED},
        ts,
    )
    items = [*rest[:500], guarded, *rest[500:]]
    proc = start_ingestor(broker.url, db_url)
    publish(broker.url, [(t, p) for t, p, *_ in first], f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(first))
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(mistake)
    publish(broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
    held_at = proc.wait_for_log("unacknowledged", timeout=30)
    assert "batch refused" in proc.lines[held_at]
    held = streetlights(db_url, device_prefix)
    time.sleep(2)  # held and retried: nothing more stored, nothing dead-lettered
    assert streetlights(db_url, device_prefix) == held < (len(first) + len(items)) // 4
    assert dead_letters(db_url, device_prefix) == 0
    assert sum("unacknowledged" in x for x in proc.lines) == 1  # said once, not per retry
    assert proc.metric("silobreak_ingest_store_up") == 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(fix)
    proc.wait_for_log("store is back", timeout=30, start=held_at)
    wait_for_messages(db_url, device_prefix, len(first) + len(items))
    assert_stored_exactly_once(db_url, device_prefix, [*first, *items])
    assert proc.metric("silobreak_ingest_refused_batches_total") == 0
    assert proc.proc.poll() is None


def dead_letters(db_url: str, prefix: str) -> int:
    rows = query(
        db_url, "SELECT count(*) FROM rejected_messages WHERE device_id LIKE %s", prefix + "%"
    )
    return int(rows[0][0])


def streetlights(db_url: str, prefix: str) -> int:
    """Streetlight messages stored (readings_meter may be renamed away meanwhile)."""
    rows = query(
        db_url, "SELECT count(*) FROM readings_streetlight WHERE device_id LIKE %s", prefix + "%"
    )
    return int(rows[0][0])
