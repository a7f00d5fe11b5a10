"""Telemetry over a real Mosquitto into a real PostgreSQL: nothing lost, nothing doubled."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devices.catalog import PHASE_CODES
from silobreak.local import LocalMosquitto, LocalPostgres
from store.migrate import migrate
from tests.e2e.harness import (
    IngestProcess,
    fleet,
    message_count,
    messages,
    publish,
    publish_in_background,
    query,
    register,
    wait_for_messages,
    wait_until,
)

pytestmark = pytest.mark.integration

StartIngestor = Callable[..., IngestProcess]


def expected_rows(
    items: list[tuple[str, bytes, str, dict[str, object], datetime]],
) -> set[tuple[object, ...]]:
    out: set[tuple[object, ...]] = set()
    for _, _, device, metrics, ts in items:
        for name, raw in metrics.items():
            value = PHASE_CODES[raw] if isinstance(raw, str) else raw
            out.add((device, name, ts, float(value)))  # type: ignore[arg-type]
    return out


def stored_rows(db_url: str, prefix: str) -> list[tuple[object, ...]]:
    return query(
        db_url,
        "SELECT device_id, metric, time, value, service FROM readings WHERE device_id LIKE %s",
        prefix + "%",
    )


def test_ingest_stores_every_reading_once_tagged_with_its_owner(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=25)
    register(db_url, records)
    items = messages(records, per_device=100)
    assert len(items) == 10_000
    proc = start_ingestor(broker.url, db_url)

    publish(broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, 10_000)

    rows = stored_rows(db_url, device_prefix)
    assert {r[:4] for r in rows} == expected_rows(items)
    assert len(rows) == len(expected_rows(items))
    owner = {r.device_id: r.service for r in records}
    assert {r[4] for r in rows} == {"lighting", "mobility", "environment", "energy", "water"}
    assert all(r[4] == owner[str(r[0])] for r in rows)

    # The same messages once more: all received and committed, none adds a row.
    publish(broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub2")
    wait_until(
        lambda: proc.metric("silobreak_ingest_received_total") == 20_000, 60, "the second pass"
    )
    assert proc.metric("silobreak_ingest_duplicates_total") == 10_000
    assert sorted(stored_rows(db_url, device_prefix)) == sorted(rows)
    assert query(db_url, "SELECT count(*) FROM rejected_messages")[0][0] == 0


def test_ingest_dead_letters_each_reason_and_keeps_storing_around_them(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    good = fleet(device_prefix, per_type=1)
    register(db_url, good)
    air = f"{device_prefix}air_sensor-000"
    now = datetime.now(UTC)
    bad = {
        "payload_too_large": (air, b'{"metrics":{"pm25":1},"pad":"' + b"x" * 70_000 + b'"}'),
        "malformed_payload": (air, b'{"metrics": {"pm25": 1'),
        "unknown_device": (f"{device_prefix}ghost", b'{"metrics":{"pm25":1}}'),
        "schema_violation": (air, b'{"metrics":{"pm25":1e6}}'),
        "timestamp_out_of_range": (
            air,
            json.dumps(
                {"ts": (now + timedelta(hours=2)).isoformat(), "metrics": {"pm25": 1}}
            ).encode(),
        ),
    }
    before = messages(good, per_device=5, end=now - timedelta(minutes=1))
    after = messages(good, per_device=5, end=now)
    stream = [(t, p) for t, p, *_ in before]
    stream += [(f"devices/{dev}/telemetry", body) for dev, body in bad.values()]
    stream += [(t, p) for t, p, *_ in after]
    start_ingestor(broker.url, db_url)

    publish(broker.url, stream, f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(before) + len(after))
    wait_until(
        lambda: (
            len(
                query(
                    db_url,
                    "SELECT 1 FROM rejected_messages WHERE device_id LIKE %s",
                    device_prefix + "%",
                )
            )
            == 5
        ),
        30,
        "five rejects",
    )
    rejects = query(
        db_url,
        "SELECT reason, device_id, topic, payload, detail FROM rejected_messages"
        " WHERE device_id LIKE %s",
        device_prefix + "%",
    )
    assert {r[0] for r in rejects} == set(bad)
    for reason, device, topic, payload, detail in rejects:
        assert (device, bytes(payload)) == (bad[reason][0], bad[reason][1])
        assert topic == f"devices/{device}/telemetry"
        assert detail


def test_ingest_accepts_a_device_registered_while_it_runs(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    start_ingestor(broker.url, db_url)
    late = fleet(device_prefix, per_type=1)[:1]
    register(db_url, late)
    items = messages(late, per_device=1)

    def stored() -> bool:
        publish(broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
        return message_count(db_url, device_prefix) == 1

    wait_until(stored, 10, "the new device's reading", interval=0.3)


def test_ingest_killed_mid_run_loses_and_doubles_nothing(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=200)  # 8,000 messages, ~4 s at 2,000/s
    first = start_ingestor(broker.url, db_url)
    sender = publish_in_background(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    wait_until(lambda: message_count(db_url, device_prefix) >= 1000, 30, "a first thousand")
    first.kill()
    killed_at = message_count(db_url, device_prefix)
    assert killed_at < len(items)
    start_ingestor(broker.url, db_url)  # same client id: the broker hands back what was unacked
    sender.join(60)
    wait_for_messages(db_url, device_prefix, len(items))
    assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(items)


@pytest.mark.fault
def test_ingest_waits_out_a_database_outage_with_bounded_memory(
    broker: LocalMosquitto, service_dir: Path, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    with LocalPostgres(service_dir / "pg") as pg:
        migrate(pg.url)
        records = fleet(device_prefix, per_type=10)
        register(pg.url, records)
        items = messages(records, per_device=200)
        proc = start_ingestor(broker.url, pg.url, INGEST_RECEIVE_MAXIMUM="2000")
        sender = publish_in_background(
            broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
        )
        wait_until(lambda: message_count(pg.url, device_prefix) >= 1000, 30, "a first thousand")
        pg.stop()
        down_since = time.monotonic()
        outage_log = proc.wait_for_log("unavailable", timeout=30)
        status, why = proc.health()
        assert (status, "store" in why) == (503, True)
        rss_start = proc.rss_kib()
        sender.join(60)  # everything is published while the database is down
        # The fault itself lasts 10 s (the outage), not a wait for a result.
        time.sleep(max(0.0, 10.0 - (time.monotonic() - down_since)))
        rss_end = proc.rss_kib()
        # Received but unacknowledged messages are capped by the receive maximum (2,000 of
        # ~150 bytes), so the process may not grow by more than a few MiB while it waits.
        assert rss_end - rss_start < 20 * 1024, (rss_start, rss_end)
        assert not sender.is_alive()
        pg.start()
        proc.wait_for_log("store is back", timeout=60, start=outage_log)
        assert proc.health()[0] == 200
        wait_for_messages(pg.url, device_prefix, len(items))
        assert {r[:4] for r in stored_rows(pg.url, device_prefix)} == expected_rows(items)


def test_two_ingestors_split_the_shared_subscription(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=25)
    register(db_url, records)
    items = messages(records, per_device=40)
    one = start_ingestor(broker.url, db_url, client="a")
    two = start_ingestor(broker.url, db_url, client="b")
    publish(broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(items))
    assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(items)
    stored = [p.metric("silobreak_ingest_stored_total") for p in (one, two)]
    assert sum(stored) == len(items)
    # The broker shares round-robin: each of the two takes a real part of the load.
    assert all(s > len(items) / 4 for s in stored), stored


@pytest.mark.fault
def test_ingest_stopped_during_an_outage_leaves_its_backlog_to_the_broker(
    broker: LocalMosquitto, service_dir: Path, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    with LocalPostgres(service_dir / "pg") as pg:
        migrate(pg.url)
        records = fleet(device_prefix, per_type=5)
        register(pg.url, records)
        items = messages(records, per_device=50)
        first = start_ingestor(broker.url, pg.url)
        pg.stop()
        publish(broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
        first.wait_for_log("unavailable")
        assert first.stop() == 0  # SIGTERM: it gives up on the store within its grace period
        assert any("unacknowledged" in line for line in first.lines)
        pg.start()
        start_ingestor(broker.url, pg.url)  # same client id
        wait_for_messages(pg.url, device_prefix, len(items))
        assert {r[:4] for r in stored_rows(pg.url, device_prefix)} == expected_rows(items)
