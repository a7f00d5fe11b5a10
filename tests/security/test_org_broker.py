"""The broker keeps organisations apart: its ACL, not a route handler, is what refuses.

A city and a commune share one Mosquitto running the configuration `silobreak broker-config`
writes, with the password and ACL files `broker-sync` makes from the registry. Each
organisation's coordinator reads its own organisation's device topics and no other's; a data
team can publish nothing under a device's topic (so nothing it received can be put back on
the platform as if a device had sent it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from devices.registry import new_record
from silobreak.broker_sync import sync_broker
from store.lifecycle import register_devices
from store.organisations import add_organisation
from store.principals import add_principal
from tests.e2e.secure_broker import ACTOR, NOT_AUTHORIZED, Device, SecureCity, secure_city
from tests.security.test_security import Listener, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def city(service_dir: Path, db_url: str) -> Iterator[SecureCity]:
    with secure_city(service_dir, db_url) as c:
        yield c


def reading(n: float) -> bytes:
    return json.dumps({"ts": datetime.now(UTC).isoformat(), "metrics": {"power_w": n}}).encode()


def test_a_coordinator_reads_its_own_organisations_devices_and_no_other(
    city: SecureCity, device_prefix: str
) -> None:
    p = device_prefix
    lamp, c_lamp = f"{p}lamp", f"{p}c-lamp"
    with psycopg.connect(city.db_url, autocommit=True) as conn:
        add_organisation(conn, "commune", "municipality", actor=ACTOR)
        broker = {
            name: add_principal(conn, name, kind, organisation=org, actor=ACTOR)
            for name, kind, org in (
                ("data-office", "coordinator", "city"),
                ("c-office", "coordinator", "commune"),
                ("c-analysts", "team", "commune"),
            )
        }
        secrets = register_devices(
            conn, [new_record(lamp, "streetlight", "lighting")], actor=ACTOR, organisation="city"
        ).secrets
        secrets |= register_devices(
            conn, [new_record(c_lamp, "streetlight", "c-lighting")], actor=ACTOR,
            organisation="commune",
        ).secrets  # fmt: skip
        sync_broker(conn, city.files)

    clients = city.broker.clients_port
    filters = ["devices/+/telemetry", f"devices/{lamp}/#", f"devices/{c_lamp}/#"]
    ours = Listener(clients, "coordinator~data-office", broker["data-office"], f"{p}ours")
    theirs = Listener(clients, "coordinator~c-office", broker["c-office"], f"{p}theirs")
    devices = {
        d: Device(d, secrets[d], city.broker.tls_port, ca=city.certs.ca_cert) for d in secrets
    }
    team = Device(
        "team~c-analysts", broker["c-analysts"], clients, tls=False, username="team~c-analysts"
    )
    try:
        ours.start(filters)
        theirs.start(filters)
        for device in devices.values():
            assert device.connect() == 0
        assert devices[lamp].publish(f"devices/{lamp}/telemetry", reading(1)) == 0
        assert devices[c_lamp].publish(f"devices/{c_lamp}/telemetry", reading(2)) == 0
        # Sentinels: each coordinator's own organisation's message, published after the other's.
        assert devices[lamp].publish(f"devices/{lamp}/telemetry", reading(3)) == 0
        wait_until(lambda: theirs.has(f"devices/{c_lamp}/telemetry"), "the commune's reading")
        wait_until(
            lambda: ours.topics().count(f"devices/{lamp}/telemetry") >= 2, "the city's sentinel"
        )
        assert set(theirs.topics()) == {f"devices/{c_lamp}/telemetry"}
        assert set(ours.topics()) == {f"devices/{lamp}/telemetry"}

        # A data team cannot publish as a device, in its own organisation or another's.
        assert team.connect() == 0
        for device_id in (c_lamp, lamp):
            topic = f"devices/{device_id}/telemetry"
            assert team.publish(topic, reading(4)) == NOT_AUTHORIZED
    finally:
        for c in (*devices.values(), team):
            c.close()
        ours.close()
        theirs.close()
