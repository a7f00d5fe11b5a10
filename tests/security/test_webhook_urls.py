"""Attack 1: a webhook URL that escapes the allow-list with dot segments or encodings.

The allow-list is `http://127.0.0.1:<port>/hooks/environment/` and `.../hooks/mobility` (no
trailing `/`). The receiver answers every path, so a request that escaped would be seen.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from tests.security.conftest import Receiver
from tests.streams.conftest import Town, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.security]

ESCAPES = (
    "/hooks/environment/../../admin/purge",
    "/hooks/environment/%2e%2e/%2e%2e/admin/purge",
    "/hooks/environment/%2E%2E/%2E%2E/admin/purge",
    "/hooks/environment/.%2e/.%2e/admin/purge",
    "/hooks/environment/./../../admin/purge",
    "/hooks/environment%2f..%2f..%2fadmin%2fpurge",
    "/hooks/environment/..%2f..%2fadmin/purge",
    "/hooks/environment/..%2F..%2Fadmin/purge",
    "/hooks/environment/..%5c..%5cadmin/purge",
    "/hooks/environment/..\\..\\admin/purge",
    "/hooks/environmentXYZ/",
    "/hooks/environment-admin/purge",
    "/hooks/mobilityXYZ",
    "/hooks/mobility/../../admin/purge",
    "/hooks/mobility/%2e%2e/admin",
    "/hooks/environment/../mobilityXYZ",
)


def test_a_webhook_url_escaping_the_allow_list_is_refused_in_every_form(
    town: Town, receiver: Receiver
) -> None:
    g = town.grant("environment", consumer="planning", device_types=["air_sensor"])
    refused = {}
    with town.http("planning") as h:
        for path in ESCAPES:
            url = f"http://127.0.0.1:{town.hook_port}{path}"
            r = h.post("/v1/subscriptions", json={"grant_id": g["id"], "delivery": "webhook",
                                                  "webhook_url": url})  # fmt: skip
            refused[path] = (r.status_code, r.json().get("reason"))
    assert refused == dict.fromkeys(ESCAPES, (403, "webhook_not_allowed"))
    assert receiver.paths() == []


def test_an_allowed_url_is_sent_to_its_normal_form_and_nothing_else_is_posted(
    town: Town, receiver: Receiver
) -> None:
    g = town.grant("environment", consumer="planning", device_types=["air_sensor"],
                   metrics=["pm25"])  # fmt: skip
    base = f"127.0.0.1:{town.hook_port}"
    asked = {
        f"http://{base}/hooks/environment/./in/../%69n": "/hooks/environment/in",
        f"HTTP://{base}/hooks/mobility/x": "/hooks/mobility/x",
        f"http://{base}/hooks/mobility": "/hooks/mobility",
    }
    with town.http("planning") as h:
        for url, path in asked.items():
            r = h.post("/v1/subscriptions", json={"grant_id": g["id"], "delivery": "webhook",
                                                  "webhook_url": url})  # fmt: skip
            assert r.status_code == 201, r.text
            assert r.json()["webhook_url"] == f"http://127.0.0.1:{town.hook_port}{path}"
    air = f"{town.prefix}air-n1"
    town.write("air_sensor", [(datetime.now(UTC), air, 12.0, 20.0, 30.0, 40.0, 15.0, 50.0)])
    wait_until(lambda: set(receiver.paths()) == set(asked.values()), 20, "three deliveries")
    assert all(p in asked.values() for p in receiver.paths())


def test_a_stored_url_outside_the_allow_list_is_never_posted_to(
    town: Town, receiver: Receiver
) -> None:
    """A subscription stored before URLs were normalised (or before the allow-list changed):
    the gateway checks the normal form again and stops it instead of posting."""
    g = town.grant("environment", consumer="planning", device_types=["air_sensor"])
    escaping = f"http://127.0.0.1:{town.hook_port}/hooks/environment/../../admin/purge"
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
        assert snapshot is not None
        conn.execute(
            "INSERT INTO subscriptions (id, consumer, grant_id, device_types, metrics, delivery,"
            " webhook_url, secret, cursor) VALUES ('s00000000000000e1', 'planning', %s, '{}',"
            " '{}', 'webhook', %s, 'a-secret', %s)",
            (g["id"], escaping, f"L{snapshot[0]}"),
        )

    def state() -> tuple[str, str]:
        with psycopg.connect(town.db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT status, note FROM subscriptions WHERE id = 's00000000000000e1'"
            ).fetchone()
        assert row is not None
        return row[0], row[1]

    wait_until(lambda: state()[0] != "active", 20, "the gateway to take the subscription on")
    assert state() == ("stopped", "webhook_not_allowed")
    assert receiver.paths() == []
