"""MQTT delivery: batches published QoS 1 to `deliveries/<consumer>/<subscription>`.

paho, not ingest's lean client: `streams` and `ingest` never import each other, and a
gateway publishes a batch per tick per subscription, not tens of thousands of messages a second.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from mqtt import BadMqttUrl, MqttUrl
from streams.errors import StreamsError

logger = logging.getLogger(__name__)

# A broker that has not acknowledged a publish by then is treated as gone (retried).
PUBLISH_TIMEOUT_S: Final = 10.0
# How long connect() waits for the broker's CONNACK.
CONNECT_TIMEOUT_S: Final = 10.0


class MqttDeliveryError(StreamsError):
    """The broker refused or did not acknowledge a delivery."""


class MqttDelivery:
    """One broker connection shared by a gateway's MQTT subscriptions."""

    def __init__(self, url: str, *, client_id: str | None = None) -> None:
        try:
            broker = MqttUrl.parse(url)
        except BadMqttUrl as exc:
            raise MqttDeliveryError(str(exc)) from None
        self._host = broker.host
        self._port = broker.port
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"streams-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv311,
        )
        if broker.username is not None:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self._client.tls_set()
        self._connected = asyncio.Event()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                loop.call_soon_threadsafe(self._connected.set)

        self._client.on_connect = on_connect
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        await asyncio.to_thread(self._client.connect, self._host, self._port, 30)
        self._client.loop_start()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._connected.wait()
        except TimeoutError:
            raise MqttDeliveryError(f"MQTT broker {self._host}:{self._port}: no CONNACK") from None

    async def close(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 1 and wait for the broker's PUBACK."""
        info = self._client.publish(topic, payload, qos=1)
        try:
            await asyncio.to_thread(info.wait_for_publish, PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:
            raise MqttDeliveryError(f"publish to {topic}: {exc}") from exc
        if not info.is_published():
            raise MqttDeliveryError(f"publish to {topic}: no PUBACK in {PUBLISH_TIMEOUT_S:g} s")
