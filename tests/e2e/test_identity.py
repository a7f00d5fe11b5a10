"""Identity enforced by a real Mosquitto running the generated config, against real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from devices.registry import new_record
from mqtt import MqttError, MqttPublisher, PublishRejected, Will
from store.lifecycle import transfer
from tests.e2e.harness import IngestProcess, query, wait_until
from tests.e2e.secure_broker import (
    ACTOR,
    NOT_AUTHORIZED,
    Device,
    SecureCity,
    start_secure_city,
)

pytestmark = pytest.mark.integration

StartIngestor = Callable[..., IngestProcess]
# The bound on how soon a revoked or decommissioned device is cut off.
CUT_OFF_S = 5.0


@pytest.fixture
def city(service_dir: Path, db_url: str) -> Iterator[SecureCity]:
    c = start_secure_city(service_dir, db_url)
    try:
        yield c
    finally:
        c.broker.stop()


def reading(ts: datetime, **metrics: float) -> bytes:
    return json.dumps({"ts": ts.isoformat(), "metrics": metrics}).encode()


def rows_of(db_url: str, device_id: str) -> list[tuple[datetime, str]]:
    return [
        (r[0], r[1])
        for r in query(
            db_url,
            "SELECT DISTINCT time, service FROM readings WHERE device_id = %s ORDER BY time",
            device_id,
        )
    ]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    return subprocess.run(
        [sys.executable, "-m", "silobreak", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_device_stores_its_readings_and_the_broker_refuses_it_another_devices_topic(
    city: SecureCity, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    air, lamp = f"{device_prefix}air", f"{device_prefix}lamp"
    secrets = city.register([new_record(air, "air_sensor"), new_record(lamp, "streetlight")])
    start_ingestor(city.ingest_url, city.db_url)
    device = Device(air, secrets[air], city.broker.tls_port, ca=city.certs.ca_cert)
    try:
        assert device.connect() == 0
        now = datetime.now(UTC).replace(microsecond=0)
        assert device.publish(f"devices/{air}/telemetry", reading(now, pm25=12.5)) == 0
        wait_until(lambda: len(rows_of(city.db_url, air)) == 1, 30, "the air sensor's reading")

        # Posing as the streetlight: the broker answers "not authorized" and forwards nothing.
        forged = reading(now, power_w=40.0)
        assert device.publish(f"devices/{lamp}/telemetry", forged) == NOT_AUTHORIZED
        assert device.publish(f"devices/{lamp}/status", b'{"state":"online"}') == NOT_AUTHORIZED
        # A later message of its own is stored: ingest has seen everything published before it.
        later = now + timedelta(seconds=1)
        assert device.publish(f"devices/{air}/telemetry", reading(later, pm25=13.0)) == 0
        wait_until(lambda: len(rows_of(city.db_url, air)) == 2, 30, "the second reading")
    finally:
        device.close()
    assert rows_of(city.db_url, lamp) == []
    assert query(city.db_url, "SELECT count(*) FROM rejected_messages")[0][0] == 0
    assert all(service == "environment" for _, service in rows_of(city.db_url, air))

    # Ingest's own account reads telemetry but cannot publish as a device either.
    async def ingest_posing_as_device() -> None:
        pub = MqttPublisher(city.ingest_url, client_id=f"{device_prefix}ingest-pub")
        await pub.start()
        try:
            await pub.publish(f"devices/{air}/telemetry", reading(now, pm25=1.0))
            await pub.flush()
        finally:
            await pub.stop()

    with pytest.raises(PublishRejected, match="not authorized"):
        asyncio.run(ingest_posing_as_device())


def test_a_wrong_secret_and_an_unknown_device_are_refused_at_connect(
    city: SecureCity, device_prefix: str
) -> None:
    known, other = f"{device_prefix}known", f"{device_prefix}other"
    secrets = city.register([new_record(known, "meter"), new_record(other, "meter")])
    attempts = {
        "wrong secret": Device(known, secrets[other], city.broker.tls_port, ca=city.certs.ca_cert),
        "unknown id": Device(
            f"{device_prefix}ghost", secrets[known], city.broker.tls_port, ca=city.certs.ca_cert
        ),
        "plain listener, wrong secret": Device(known, "x" * 43, city.broker.port, tls=False),
    }
    try:
        for what, device in attempts.items():
            assert device.connect() == NOT_AUTHORIZED, what
    finally:
        for device in attempts.values():
            device.close()
    log = (city.broker.cfg.directory / "mosquitto.log").read_text()
    assert log.count("disconnected, not authorised") >= len(attempts)


def test_revoked_and_decommissioned_devices_are_cut_off_within_5s_without_a_restart(
    city: SecureCity, device_prefix: str
) -> None:
    revoked, retired = f"{device_prefix}revoked", f"{device_prefix}retired"
    secrets = city.register([new_record(revoked, "streetlight"), new_record(retired, "meter")])
    pid = city.broker.pid()
    env = {"SILOBREAK_DATABASE_URL": city.db_url, "SILOBREAK_BROKER_DIR": str(city.files.directory)}
    for device_id, command in ((revoked, "revoke-secret"), (retired, "decommission")):
        device = Device(device_id, secrets[device_id], city.broker.tls_port, ca=city.certs.ca_cert)
        try:
            assert device.connect() == 0
            started = time.monotonic()
            result = cli("devices", command, device_id, **env)
            assert result.returncode == 0, result.stderr
            assert "broker reloaded" in result.stderr
            assert device.wait_disconnected(CUT_OFF_S) - started < CUT_OFF_S
        finally:
            device.close()
        again = Device(device_id, secrets[device_id], city.broker.tls_port, ca=city.certs.ca_cert)
        try:
            assert again.connect() == NOT_AUTHORIZED
        finally:
            again.close()
    assert city.broker.is_running()
    assert city.broker.pid() == pid
    assert query(city.db_url, "SELECT lifecycle FROM devices WHERE device_id = %s", retired) == [
        ("decommissioned",)
    ]


def test_a_transfer_tags_readings_by_their_own_time_even_when_they_arrive_late(
    city: SecureCity, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    sensor = f"{device_prefix}air"
    secrets = city.register([new_record(sensor, "air_sensor")])
    proc = start_ingestor(city.ingest_url, city.db_url)
    device = Device(sensor, secrets[sensor], city.broker.tls_port, ca=city.certs.ca_cert)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    handover = t0 + timedelta(seconds=60)

    def send(seconds: range) -> None:
        for s in seconds:
            ts = t0 + timedelta(seconds=s)
            assert device.publish(f"devices/{sensor}/telemetry", reading(ts, no2=float(s))) == 0

    try:
        assert device.connect() == 0
        # Before the transfer: readings from before the hand-over, and some from after it
        # (stored as the old owner's until the transfer re-tags them).
        send(range(10))
        send(range(70, 75))
        wait_until(lambda: len(rows_of(city.db_url, sensor)) == 15, 30, "15 readings")
        seen = len(proc.lines)
        with psycopg.connect(city.db_url, autocommit=True) as conn:
            done = transfer(conn, sensor, "mobility", handover, actor=ACTOR)
        assert (done.old_service, done.retagged) == ("environment", 5)
        proc.wait_for_log("registry reloaded", start=seen)
        # After it: late readings from before the hand-over, and new ones from after it.
        send(range(20, 30))
        send(range(80, 90))
        wait_until(lambda: len(rows_of(city.db_url, sensor)) == 35, 30, "35 readings")
    finally:
        device.close()
    rows = rows_of(city.db_url, sensor)
    before = {service for ts, service in rows if ts < handover}
    after = {service for ts, service in rows if ts >= handover}
    assert (before, after) == ({"environment"}, {"mobility"})
    assert sum(ts < handover for ts, _ in rows) == 20


def test_bulk_import_of_10000_devices_is_all_or_nothing_with_credentials_in_one_step(
    city: SecureCity, device_prefix: str, tmp_path: Path
) -> None:
    env = {"SILOBREAK_DATABASE_URL": city.db_url, "SILOBREAK_BROKER_DIR": str(city.files.directory)}
    header = "device_id,device_type,service,district,lat,lon\n"
    rows = [
        f"{device_prefix}{i:05d},air_sensor,environment,d{i % 12},45.{i:05d},5.{i:05d}\n"
        for i in range(10_000)
    ]
    bad = list(rows)
    bad[3] = f"{device_prefix}bad,toaster,environment,,,\n"  # line 5: unknown type
    bad[5000] = f"{device_prefix}00001,air_sensor,environment,,,\n"  # line 5002: a repeat
    bad[9998] = f"{device_prefix}09998,air_sensor,,,,\n"  # line 10000: no service
    (tmp_path / "bad.csv").write_text(header + "".join(bad))
    (tmp_path / "good.csv").write_text(header + "".join(rows))

    refused = cli("devices", "import", str(tmp_path / "bad.csv"),
                  "--secrets-out", str(tmp_path / "bad-secrets.csv"), **env)  # fmt: skip
    assert refused.returncode == 1
    errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, refused.stderr
    assert "3 bad row(s), nothing imported" in errors[0]
    assert all(f"line {n}:" in errors[0] for n in (5, 5002, 10000))
    assert not (tmp_path / "bad-secrets.csv").exists()
    count = "SELECT count(*) FROM devices WHERE device_id LIKE %s"
    assert query(city.db_url, count, device_prefix + "%") == [(0,)]

    secrets_file = tmp_path / "secrets.csv"
    imported = cli("devices", "import", str(tmp_path / "good.csv"),
                   "--secrets-out", str(secrets_file), **env)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "10000 new" in imported.stdout
    assert "broker reloaded" in imported.stderr
    assert query(city.db_url, count, device_prefix + "%") == [(10_000,)]
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    secrets = dict(line.split(",") for line in secrets_file.read_text().splitlines()[1:])
    assert len(secrets) == 10_000
    password_lines = city.files.listener("devices")[0].read_text().splitlines()
    assert sum(line.startswith(device_prefix) for line in password_lines) == 10_000
    for device_id in (f"{device_prefix}00000", f"{device_prefix}09999"):
        device = Device(device_id, secrets[device_id], city.broker.tls_port, ca=city.certs.ca_cert)
        try:
            assert device.connect() == 0
        finally:
            device.close()


def test_tls_devices_connect_with_the_ca_and_plain_tcp_to_the_tls_port_fails(
    city: SecureCity, device_prefix: str
) -> None:
    lamp = f"{device_prefix}lamp"
    secret = city.register([new_record(lamp, "streetlight")])[lamp]
    with_ca = Device(lamp, secret, city.broker.tls_port, ca=city.certs.ca_cert)
    try:
        assert with_ca.connect() == 0
    finally:
        with_ca.close()
    # Without the development CA the broker's certificate is not trusted.
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection(("127.0.0.1", city.broker.tls_port), timeout=10) as raw,
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost"),
    ):
        pass

    async def plain_to_tls_port() -> None:
        pub = MqttPublisher(
            f"mqtt://{lamp}:{secret}@127.0.0.1:{city.broker.tls_port}", client_id=lamp
        )
        await pub.start()

    with pytest.raises(MqttError) as caught:
        asyncio.run(plain_to_tls_port())
    assert "refused" not in str(caught.value)  # no CONNACK at all: the TLS listener hung up


def test_status_topic_sets_connection_and_last_seen(
    city: SecureCity, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    meter = f"{device_prefix}meter"
    secret = city.register([new_record(meter, "meter")])[meter]
    start_ingestor(city.ingest_url, city.db_url)
    url = f"mqtt://{meter}:{secret}@127.0.0.1:{city.broker.device_port}"
    online_at = datetime.now(UTC).replace(microsecond=0)

    def presence() -> tuple[str, datetime | None]:
        row = query(city.db_url, "SELECT connection, last_seen FROM devices WHERE device_id = %s",
                    meter)[0]  # fmt: skip
        return row[0], row[1]

    async def live_then_vanish() -> None:
        will = Will(f"devices/{meter}/status", b'{"state": "offline"}', retain=True)
        pub = MqttPublisher(url, client_id=meter, will=will)
        await pub.start()
        status = json.dumps({"state": "online", "ts": online_at.isoformat()}).encode()
        await pub.publish(f"devices/{meter}/status", status, retain=True)
        await pub.flush()
        await asyncio.to_thread(
            wait_until, lambda: presence()[0] == "online", 30, "the online status"
        )
        await pub.stop(send_will=True)  # the broker publishes the last will, as for a crash

    asyncio.run(live_then_vanish())
    wait_until(lambda: presence()[0] == "offline", 30, "the last will")
    assert presence()[1] == online_at
