"""Webhook and MQTT delivery against a real HTTP receiver and the real Mosquitto."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from silobreak.local import LocalMosquitto
from streams import webhooks
from tests.streams.conftest import Town, wait_until
from tests.support.http import serving

pytestmark = pytest.mark.integration


class Receiver(ThreadingHTTPServer):
    """Answers 500 to the first `failures` POSTs, then 200; keeps what it accepted."""

    def __init__(self, port: int, failures: int) -> None:
        self.failures = failures
        self.attempts: list[str] = []
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.attempts.append(self.headers[webhooks.IDEMPOTENCY_HEADER])
        if len(self.server.attempts) <= self.server.failures:
            self.send_response(500)
        else:
            self.server.accepted.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver(town: Town) -> Iterator[Receiver]:
    with serving(Receiver(town.hook_port, failures=3)) as server:
        yield server


def test_a_webhook_failing_three_times_then_recovering_gets_every_batch_once_signed(
    town: Town, receiver: Receiver
) -> None:
    p = town.prefix
    g = town.grant("mobility", consumer="planning", device_types=["traffic_light"],
                   metrics=["vehicle_count"])  # fmt: skip
    url = f"http://127.0.0.1:{town.hook_port}/hooks/planning"
    with town.http("planning") as h:
        sub = h.post("/v1/subscriptions", json={"grant_id": g["id"], "delivery": "webhook",
                                                "webhook_url": url}).json()  # fmt: skip
    assert sub["secret"]
    for k in range(5):
        town.write("traffic_light", [(datetime.now(UTC), f"{p}tl-n1", 2, k)])
    wait_until(
        lambda: sum(len(json.loads(b)["readings"]) for _, b in receiver.accepted) >= 5,
        timeout=20, what="five readings delivered",
    )  # fmt: skip
    keys = [h[webhooks.IDEMPOTENCY_HEADER] for h, _ in receiver.accepted]
    assert len(keys) == len(set(keys))  # each batch accepted once
    assert receiver.attempts[:4] == [keys[0]] * 4  # the same batch retried, then acknowledged
    values = [r["value"] for _, b in receiver.accepted for r in json.loads(b)["readings"]]
    assert values == [0.0, 1.0, 2.0, 3.0, 4.0]
    for headers, body in receiver.accepted:
        assert webhooks.verify(sub["secret"], headers, body)
        assert not webhooks.verify("another secret", headers, body)
    with town.http("mobility") as h:
        wait_until(
            lambda: sum(e["readings"] for e in h.get("/v1/audit", params={
                "action": "delivery.batch"}).json()["entries"]) == 5,
            what="the deliveries on record",
        )  # fmt: skip


def test_a_webhook_outside_the_allow_list_is_refused_at_creation(town: Town) -> None:
    g = town.grant("mobility", consumer="planning", device_types=["traffic_light"])
    with town.http("planning") as h:
        for url in (
            "http://example.org/hooks/",
            f"http://127.0.0.1:{town.hook_port}/elsewhere",
            f"http://127.0.0.1:{town.hook_port}@evil.example/hooks/",
            f"https://127.0.0.1:{town.hook_port}/hooks/",
        ):
            r = h.post("/v1/subscriptions", json={"grant_id": g["id"], "delivery": "webhook",
                                                  "webhook_url": url})  # fmt: skip
            assert (r.status_code, r.json()["reason"]) == (403, "webhook_not_allowed"), url


def test_mqtt_delivery_publishes_to_the_consumers_own_topic(
    town: Town, mqtt_broker: LocalMosquitto
) -> None:
    p = town.prefix
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"], districts=["south"])  # fmt: skip
    with town.http("planning") as h:
        sub = h.post("/v1/subscriptions", json={"grant_id": g["id"], "delivery": "mqtt"}).json()
    assert sub["topic"] == f"deliveries/planning/{sub['id']}"
    got: list[dict[str, Any]] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{p}consumer")
    client.on_message = lambda _c, _u, msg: got.append(json.loads(msg.payload))
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", mqtt_broker.port)
    client.subscribe(sub["topic"], qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        town.write("streetlight", [(datetime.now(UTC), f"{p}lamp-s1", 1, 50.0, 42.0),
                                   (datetime.now(UTC), f"{p}lamp-n1", 1, 50.0, 43.0)])  # fmt: skip
        wait_until(lambda: bool(got), timeout=20, what="an MQTT delivery")
    finally:
        client.loop_stop()
        client.disconnect()
    readings = [r for batch in got for r in batch["readings"]]
    assert [(r["device_id"], r["metric"], r["value"]) for r in readings] == [
        (f"{p}lamp-s1", "power_w", 42.0)
    ]
    assert got[0]["subscription"] == sub["id"]


def test_the_allow_list_compares_parsed_urls() -> None:
    allow = ["https://hooks.city.example/in/", "http://127.0.0.1:9000/"]
    assert webhooks.allowed("https://hooks.city.example/in/planning", allow)
    assert webhooks.allowed("http://127.0.0.1:9000/x", allow)
    assert not webhooks.allowed("https://hooks.city.example/out", allow)
    assert not webhooks.allowed("https://hooks.city.example.evil/in/", allow)
    assert not webhooks.allowed("https://user@hooks.city.example/in/", allow)
    assert not webhooks.allowed("http://127.0.0.1:9001/x", allow)
    assert not webhooks.allowed("file:///etc/passwd", allow)
    assert not webhooks.allowed("http://[::1", allow)
