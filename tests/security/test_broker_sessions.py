"""Attack 4: a device (or a consumer) reusing a platform component's client id to wipe its
persistent session, or another device's to knock it off, on every listener."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from devices.registry import new_record
from store.principals import add_principal
from tests.e2e.harness import IngestProcess, ingest_env, query
from tests.e2e.secure_broker import ACTOR, NOT_AUTHORIZED, Device, SecureCity, start_secure_city
from tests.security.test_security import release
from tests.streams.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.security]

NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK: accepted, nobody subscribed


@pytest.fixture
def city(service_dir: Path, db_url: str) -> Iterator[SecureCity]:
    c = start_secure_city(service_dir, db_url)
    try:
        yield c
    finally:
        c.broker.stop()


def telemetry(i: int) -> bytes:
    ts = (datetime.now(UTC) - timedelta(seconds=10 - i)).isoformat()
    return json.dumps({"ts": ts, "seq": i, "metrics": {"index": float(i)}}).encode()


def test_no_device_or_consumer_can_wipe_the_ingestors_session_on_any_listener(
    city: SecureCity, device_prefix: str, tmp_path: Path
) -> None:
    p = device_prefix
    meter, intruder = f"{p}meter", f"{p}intruder"
    secrets = city.register([new_record(meter, "meter"), new_record(intruder, "meter")])
    with psycopg.connect(city.db_url, autocommit=True) as conn:
        team = add_principal(conn, "planning", "team", actor=ACTOR)
    city.sync()
    ingestor_id = f"{p}ingest-1"
    env = ingest_env(city.ingest_url, city.db_url, ingestor_id)
    ingest = IngestProcess(env, tmp_path)
    ingest.wait_for_log("subscribed")
    assert ingest.stop() == 0  # its persistent session stays at the broker
    device = Device(meter, secrets[meter], city.broker.device_port, tls=False)
    attempts: dict[str, Device] = {}
    try:
        assert device.connect() == 0
        acks = [device.publish(f"devices/{meter}/telemetry", telemetry(i)) for i in range(3)]
        assert acks == [0, 0, 0]  # the broker has them: they must reach the store

        b = city.broker
        ca = city.certs.ca_cert
        attempts = {
            "platform listener": Device(ingestor_id, secrets[intruder], b.port, tls=False,
                                        username=intruder),
            "device listener (plain)": Device(ingestor_id, secrets[intruder], b.device_port,
                                              tls=False, username=intruder),
            "device listener (TLS)": Device(ingestor_id, secrets[intruder], b.tls_port, ca=ca,
                                            username=intruder),
            "consumer on the clients listener": Device(ingestor_id, team, b.clients_port,
                                                       tls=False, username="team~planning"),
            "consumer on the platform listener": Device(ingestor_id, team, b.port, tls=False,
                                                        username="team~planning"),
        }  # fmt: skip
        connacks = {what: d.connect() for what, d in attempts.items()}
        assert connacks == {
            "platform listener": NOT_AUTHORIZED,
            "device listener (plain)": 0,
            "device listener (TLS)": 0,
            "consumer on the clients listener": 0,
            "consumer on the platform listener": NOT_AUTHORIZED,
        }
    finally:
        for d in (device, *attempts.values()):
            d.close()
            release(d.client)

    again = IngestProcess(ingest_env(city.ingest_url, city.db_url, ingestor_id), tmp_path)
    try:
        again.wait_for_log("subscribed")
        count = "SELECT count(DISTINCT time) FROM readings WHERE device_id = %s"
        wait_until(lambda: query(city.db_url, count, meter)[0][0] == 3, 30,
                   "the three acknowledged messages in the store")  # fmt: skip
    finally:
        again.stop()
    assert query(city.db_url, count, meter)[0][0] == 3


def test_a_device_reusing_another_devices_client_id_does_not_knock_it_off(
    city: SecureCity, device_prefix: str
) -> None:
    p = device_prefix
    victim, intruder = f"{p}victim", f"{p}intruder"
    secrets = city.register([new_record(victim, "meter"), new_record(intruder, "meter")])
    b = city.broker
    ports = {"plain": (b.device_port, False), "TLS": (b.tls_port, True)}
    for what, (port, tls) in ports.items():
        ca = city.certs.ca_cert if tls else None
        owner = Device(victim, secrets[victim], port, tls=tls, ca=ca)
        other = Device(victim, secrets[intruder], port, tls=tls, ca=ca, username=intruder)
        try:
            assert owner.connect() == 0, what
            assert other.connect() == 0, what  # connected, under its own id
            # Still connected: its next publish is acknowledged on the same connection (0x10:
            # accepted, no subscriber yet).
            ack = owner.publish(f"devices/{victim}/telemetry", telemetry(1))
            assert ack in (0, NO_MATCHING_SUBSCRIBERS), what
            assert owner.disconnected_at is None, what
        finally:
            for d in (other, owner):
                d.close()
                release(d.client)
