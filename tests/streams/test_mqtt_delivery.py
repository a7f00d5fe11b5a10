"""Streams' MQTT delivery against a real Mosquitto: PUBACK awaited, connection made again."""

from __future__ import annotations

import ast
import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mqtt import MqttSubscriber
from silobreak.local import LocalMosquitto, free_port
from streams import mqtt_delivery
from streams.mqtt_delivery import MqttDelivery, MqttDeliveryError
from tests.support.proxy import Proxy

pytestmark = pytest.mark.integration

# Generous for a loaded CI machine; a healthy local broker answers in milliseconds.
DEADLINE_S = 20.0


class Consumer:
    """A consumer with a session of its own on the broker, keeping what it was sent."""

    def __init__(self, url: str, topic: str) -> None:
        self.payloads: list[bytes] = []
        self.client = MqttSubscriber(
            url,
            client_id=f"consumer-{uuid.uuid4().hex[:8]}",
            topic_filters=[topic],
            on_publish=self._on_publish,
        )

    def _on_publish(self, packet_id: int, _topic: str, payload: bytes) -> None:
        self.payloads.append(payload)
        self.client.ack([packet_id], self.client.generation)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S}s waiting for {what}")
        await asyncio.sleep(0.01)


async def publish_as_the_gateway_does(delivery: MqttDelivery, topic: str, body: bytes) -> int:
    """Publish until the broker acknowledges, as the gateway's worker does; the failed tries."""
    failures = 0
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            await delivery.publish(topic, body)
        except MqttDeliveryError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            return failures


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(tmp_path / "mosquitto") as mosquitto:
        yield mosquitto


@pytest.fixture
def topic() -> str:
    return f"deliveries/planning/{uuid.uuid4().hex}"


def test_a_delivery_is_acknowledged_and_comes_to_the_consumer(
    broker: LocalMosquitto, topic: str
) -> None:
    async def go() -> None:
        consumer = Consumer(broker.url, topic)
        await consumer.client.start()
        delivery = MqttDelivery(broker.url)
        await delivery.connect()
        try:
            await delivery.publish(topic, b"batch-1")
            await wait_until(lambda: consumer.payloads == [b"batch-1"], "the batch")
        finally:
            await delivery.close()
            await consumer.client.stop()
        assert delivery.connects == 1

    asyncio.run(go())


def test_a_broker_that_stops_answering_is_left_for_a_new_connection(
    broker: LocalMosquitto, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt_delivery, "PUBLISH_TIMEOUT_S", 0.5)

    async def go() -> None:
        consumer = Consumer(broker.url, topic)
        await consumer.client.start()
        async with Proxy(broker.port) as proxy:
            delivery = MqttDelivery(proxy.url)
            await delivery.connect()
            try:
                await delivery.publish(topic, b"before")
                proxy.freeze()  # the link goes silent: no FIN, no RST, no PUBACK
                with pytest.raises(MqttDeliveryError, match="no PUBACK"):
                    await delivery.publish(topic, b"frozen")
                await delivery.publish(topic, b"after")  # on a new connection
                await wait_until(lambda: b"after" in consumer.payloads, "the batch after")
            finally:
                await delivery.close()
                await consumer.client.stop()
        assert delivery.connects == 2
        assert consumer.payloads == [b"before", b"after"]

    asyncio.run(go())


def test_a_broker_restart_loses_no_delivery(broker: LocalMosquitto, topic: str) -> None:
    async def go() -> None:
        consumer = Consumer(broker.url, topic)
        await consumer.client.start()
        delivery = MqttDelivery(broker.url)
        await delivery.connect()
        try:
            await delivery.publish(topic, b"before")
            await wait_until(lambda: consumer.payloads == [b"before"], "the first batch")
            broker.restart()  # the consumer's session and subscription are persisted
            failures = await publish_as_the_gateway_does(delivery, topic, b"after")
            await wait_until(lambda: b"after" in consumer.payloads, "the batch after")
        finally:
            await delivery.close()
            await consumer.client.stop()
        assert failures <= 1  # at most the publish that found the old connection gone
        assert delivery.connects == 2
        # QoS 1 is at least once: the restarted broker may hand "before" to the consumer
        # again when its PUBACK was not saved yet. Nothing may be missing or out of order.
        assert list(dict.fromkeys(consumer.payloads)) == [b"before", b"after"]

    asyncio.run(go())


def test_an_unusable_url_or_an_absent_broker_is_one_clear_error() -> None:
    with pytest.raises(MqttDeliveryError, match="mqtt://"):
        MqttDelivery("http://127.0.0.1:1883")
    delivery = MqttDelivery(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(MqttDeliveryError, match="cannot connect to MQTT broker"):
        asyncio.run(delivery.connect())


def test_streams_imports_no_paho() -> None:
    streams_dir = Path(mqtt_delivery.__file__).parent
    imported = set()
    for source in streams_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
    assert "mqtt" in imported  # the walk saw streams' own imports
    assert "paho" not in imported
