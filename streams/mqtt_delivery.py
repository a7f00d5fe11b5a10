"""MQTT delivery: batches published QoS 1 to `deliveries/<consumer>/<subscription>`.

The project's own client (`mqtt.MqttPublisher`) on the gateway's event loop: each publish
waits for its PUBACK, and a lost connection is replaced by a new one at the next publish.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Final

from mqtt import BadMqttUrl, MqttError, MqttPublisher, MqttUrl, PublishRejected
from streams.errors import StreamsError

logger = logging.getLogger(__name__)

# A broker that has not acknowledged a publish by then is treated as gone: the connection is
# dropped and the gateway publishes the batch again on a new one.
PUBLISH_TIMEOUT_S: Final = 10.0
# A PINGREQ after 15 s of silence: a broker gone quietly is noticed between batches, not by a
# publish that then waits PUBLISH_TIMEOUT_S for nothing.
KEEPALIVE_S: Final = 30


class MqttDeliveryError(StreamsError):
    """The broker refused or did not acknowledge a delivery."""


class MqttDelivery:
    """One broker connection shared by a gateway's MQTT subscriptions, made again when lost."""

    def __init__(self, url: str, *, client_id: str | None = None) -> None:
        try:
            self._broker = MqttUrl.parse(url)
        except BadMqttUrl as exc:
            raise MqttDeliveryError(str(exc)) from None
        self._url = url
        self._client_id = client_id or f"streams-{uuid.uuid4().hex[:12]}"
        self._publisher: MqttPublisher | None = None
        self._lock = asyncio.Lock()  # one connect at a time, however many workers publish
        self.connects = 0

    async def connect(self) -> None:
        """Connect now, so that a broker that is away or refuses us is known at start."""
        await self._connected()

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.stop()

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish QoS 1 and wait for the broker's PUBACK; MqttDeliveryError if it does not come."""
        publisher = await self._connected()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await publisher.publish_acked(topic, payload)
        except TimeoutError:
            self._drop(publisher)
            broker = self._broker.broker
            msg = f"publish to {topic}: no PUBACK from {broker} in {PUBLISH_TIMEOUT_S:g} s"
            raise MqttDeliveryError(msg) from None
        except PublishRejected as exc:
            raise MqttDeliveryError(f"publish to {topic}: {exc}") from exc
        except MqttError as exc:
            self._drop(publisher)
            raise MqttDeliveryError(f"publish to {topic}: {exc}") from exc

    async def _connected(self) -> MqttPublisher:
        async with self._lock:
            publisher = self._publisher
            if publisher is not None and publisher.connected:
                return publisher
            publisher = MqttPublisher(self._url, client_id=self._client_id, keepalive=KEEPALIVE_S)
            try:
                await publisher.start()
            except MqttError as exc:
                raise MqttDeliveryError(str(exc)) from exc
            if self.connects:
                logger.info("MQTT delivery: reconnected to %s", self._broker.broker)
            self.connects += 1
            self._publisher = publisher
            return publisher

    def _drop(self, publisher: MqttPublisher) -> None:
        """Abort a connection that failed a publish; the next publish makes a new one."""
        if self._publisher is publisher:
            self._publisher = None
        publisher.abort()
