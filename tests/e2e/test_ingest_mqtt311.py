"""Ingest over MQTT 3.1.1 (`?protocol=3.1.1`): a real Mosquitto into a real PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from silobreak.local import LocalMosquitto
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
from tests.e2e.test_ingest import expected_rows, stored_rows
from tests.support import rabbitmq
from tests.support.rabbitmq import LocalRabbitMQ

pytestmark = pytest.mark.integration

StartIngestor = Callable[..., IngestProcess]


def v311(broker: LocalMosquitto) -> str:
    return broker.url + "?protocol=3.1.1"


def protocols_of(broker: LocalMosquitto, client_id: str) -> set[tuple[str, str]]:
    """(protocol, clean session) of each connect of `client_id` as Mosquitto logs it: p2 is
    3.1.1 and p5 is 5.0 in its numbering; c0 keeps the session."""
    wanted = re.compile(rf" as {re.escape(client_id)} \((p\d), (c\d)")
    return {(m[1], m[2]) for m in wanted.finditer(broker.log_file.read_text())}


def test_ingest_over_mqtt_3_1_1_stores_every_reading_once(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=50)
    proc = start_ingestor(v311(broker), db_url)
    proc.wait_for_log("over MQTT 3.1.1")

    publish(v311(broker), [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(items))
    assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(items)
    assert query(db_url, "SELECT count(*) FROM rejected_messages")[0][0] == 0
    # Both ends spoke 3.1.1; the ingestor kept its session (Clean Session 0).
    assert protocols_of(broker, f"{device_prefix}ingest-1") == {("p2", "c0")}
    assert protocols_of(broker, f"{device_prefix}pub") == {("p2", "c1")}


def test_ingest_over_mqtt_3_1_1_killed_mid_run_loses_nothing(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=150)  # 6,000 messages, ~3 s at 2,000/s
    first = start_ingestor(v311(broker), db_url)
    sender = publish_in_background(
        v311(broker), [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    wait_until(lambda: message_count(db_url, device_prefix) >= 1000, 30, "a first thousand")
    first.kill()
    assert message_count(db_url, device_prefix) < len(items)
    # Same client id, Clean Session 0: the broker kept the session, queued what came while
    # no one was there and sends again what was never acknowledged.
    start_ingestor(v311(broker), db_url)
    sender.join(60)
    wait_for_messages(db_url, device_prefix, len(items))
    assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(items)


def test_ingest_with_no_share_group_subscribes_to_the_plain_filter(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    # A broker without shared subscriptions (RabbitMQ 3.10) takes one ingestor, subscribed
    # to the plain filter: an empty share group says so.
    records = fleet(device_prefix, per_type=5)
    register(db_url, records)
    items = messages(records, per_device=20)
    proc = start_ingestor(v311(broker), db_url, ingest_share_group="")
    proc.wait_for_log("subscribed to devices/+/telemetry over MQTT 3.1.1")
    publish(v311(broker), [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(items))
    assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(items)


@pytest.fixture
def rabbit(service_dir: Path) -> Iterator[LocalRabbitMQ]:
    why = rabbitmq.missing()
    if why is not None:
        pytest.skip(why)
    node = LocalRabbitMQ(service_dir / "rabbitmq")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.slow
def test_ingest_stores_every_reading_from_rabbitmq_over_3_1_1(
    rabbit: LocalRabbitMQ, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=50)
    proc = start_ingestor(rabbit.url, db_url, ingest_share_group="")
    proc.wait_for_log("subscribed to devices/+/telemetry over MQTT 3.1.1")
    publish(rabbit.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(items))
    assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(items)
    # Killed and started again under its client id, it gets what came in between.
    proc.kill()
    # Times after the first set's (which end now), inside the accepted 5 minutes ahead.
    later = messages(records, per_device=10, end=datetime.now(UTC) + timedelta(minutes=2))
    publish(rabbit.url, [(t, p) for t, p, *_ in later], f"{device_prefix}pub2")
    start_ingestor(rabbit.url, db_url, ingest_share_group="")
    wait_for_messages(db_url, device_prefix, len(items) + len(later))
