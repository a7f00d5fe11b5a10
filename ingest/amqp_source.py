"""Telemetry from a RabbitMQ cluster: one durable quorum queue per ingest group, over AMQP 0-9-1.

Devices publish MQTT 3.1.1 QoS 1 to any node; RabbitMQ's MQTT plugin routes each publish
through `amq.topic` with the topic as routing key, `/` and `.` swapped. The queue is the
platform's, declared here (durable, quorum, no expiry, `reject-publish` when full: a full
queue refuses new publishes, so a device's QoS 1 publish stays unacknowledged and is sent
again, rather than dropping the oldest). Ingestors on it are competing consumers (they replace
`$share`), each acknowledging a batch only after its commit; a consumer that dies has its
unacknowledged messages delivered to the others. The source offers the ingestor what
`MqttSubscriber` does: `on_publish(delivery_tag, topic, payload)` with the MQTT topic, then
`ack(tags, generation)`.

pika, with its asyncio adapter: consuming 50,000 messages cost ~12 µs of CPU a message
against ~34 µs for aiormq and ~61 µs for aio-pika (same node, same run, on this machine). pika
keeps the connection, declarations, acks and heartbeats; the frames of each delivery are parsed
by ingest/amqp_frames.py (draining a backlog: 11.0 µs a message against 7.8 over MQTT).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

import pika
import pika.channel
import pika.exceptions
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

from ingest.amqp_frames import WAIT, Delivery, parse_delivery
from ingest.errors import IngestError
from retries import Backoff, Policy

logger = logging.getLogger(__name__)

# MQTT topics become routing keys with `/` and `.` swapped (RabbitMQ's MQTT plugin); the swap
# is its own inverse.
_SWAP: Final = str.maketrans("/.", "./")
# After a lost connection, retry the nodes in turn: first at once-ish, then no more often
# than every 5 s (a node restarting takes ~20 s to boot here).
RECONNECT: Final = Policy(first=0.2, cap=5.0)
# A handshake or declaration not answered by then fails, and the next node is tried.
_OPEN_TIMEOUT_S: Final = 30.0


class _Connection(AsyncioConnection):  # type: ignore[misc] # pika ships no types
    """pika's asyncio connection, but a whole delivery on the consuming channel goes straight
    to `on_delivery` (ingest/amqp_frames.py) instead of through pika's frame objects: CPU per
    message, see docs/scaling.md. Everything else is pika's, frame by frame."""

    fast_channel = 0  # the consuming channel's number; 0: none yet
    on_delivery: Callable[[int, str, bytes], None] | None = None
    _frame_buffer: bytes  # pika's: what was read and not yet decoded
    bytes_received: int  # pika's

    def _on_data_available(self, data_in: bytes) -> None:
        deliver = self.on_delivery
        if not self.fast_channel or deliver is None:
            super()._on_data_available(data_in)
            return
        buf = self._frame_buffer + data_in if self._frame_buffer else data_in
        pos = 0
        try:
            while pos < len(buf):
                found = parse_delivery(buf, pos, self.fast_channel)
                if isinstance(found, Delivery):
                    pos += found.size
                    self.bytes_received += found.size  # what pika's heartbeat checker watches
                    deliver(found.delivery_tag, found.routing_key, found.body)
                    continue
                if found == WAIT:
                    return
                self._frame_buffer = buf[pos:]  # OTHER: one frame through pika
                consumed, frame_value = self._read_frame()
                if frame_value is None:
                    return
                pos += consumed
                self.bytes_received += consumed
                self._process_frame(frame_value)
        finally:
            self._frame_buffer = buf[pos:]


class AmqpUnavailable(IngestError):
    """No node of the AMQP broker could be reached, or it refused what was asked."""


def queue_name(group: str) -> str:
    """The platform's queue of an ingest group."""
    return f"silobreak.ingest.{group or 'ingest'}"


def routing_key(topic_filter: str) -> str:
    """The `amq.topic` binding key of an MQTT topic filter (`+` is AMQP's `*`)."""
    return topic_filter.translate(_SWAP).replace("+", "*")


class AmqpSource:
    """Consumes the ingest group's queue from the first node of `urls` that answers."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        queue: str,
        topic_filters: Sequence[str],
        prefetch: int,
        on_publish: Callable[[int, str, bytes], None],
        name: str,
    ) -> None:
        if not urls:
            raise AmqpUnavailable("AMQP: no broker URL")
        try:
            self._params = [pika.URLParameters(u) for u in urls]
        except (ValueError, TypeError) as exc:
            raise AmqpUnavailable(f"AMQP URL: {exc}") from exc
        self.queue = queue
        self.binding_keys = [routing_key(f) for f in topic_filters]
        self._prefetch = prefetch
        self._on_publish = on_publish
        self._name = name
        self.connected = asyncio.Event()  # set while consuming; cleared when the link drops
        self.node = ""  # host:port consumed from
        self.reconnects = 0
        self.acks_sent = 0
        self.acks_dropped = 0
        self._generation = 0
        self._conn: _Connection | None = None
        self._channel: pika.channel.Channel | None = None
        self._closed: asyncio.Future[None] | None = None
        self._paused = False
        self._held: deque[tuple[int, str, bytes]] = deque()  # bounded by the prefetch
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._failure: Exception | None = None
        self._next = 0

    @property
    def generation(self) -> int:
        """Counts channels consumed on; delivery tags are valid only within their generation."""
        return self._generation

    async def start(self) -> None:
        """Connect, declare the queue and its bindings, consume; keep consuming until stop()."""
        if self._runner is not None:
            raise RuntimeError(f"AMQP source {self._name!r} was already started")
        errors = []
        for _ in self._params:
            try:
                await self._open()
                break
            except AmqpUnavailable as exc:
                errors.append(str(exc))
        else:
            raise AmqpUnavailable("; ".join(errors))
        self._runner = asyncio.create_task(self._keep_connected(), name=f"amqp {self._name}")

    async def stop(self) -> None:
        """Close the connection: what was not acknowledged goes back to the queue."""
        self._stopping = True
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
        await self._close()

    async def wait_stopped(self) -> None:
        """Wait until stop(), or an on_publish that raised, ends the source; re-raise that."""
        if self._runner is None:
            raise RuntimeError(f"AMQP source {self._name!r} was not started")
        await asyncio.wait([self._runner])
        if self._failure is not None:
            raise self._failure

    def ack(self, delivery_tags: Sequence[int], generation: int) -> bool:
        """Acknowledge every delivery up to the highest of `delivery_tags` in one frame.

        The ingestor acknowledges its batches in arrival order, so every earlier tag of this
        channel is in this batch or was acknowledged with an earlier one. False (dropped) if
        `generation` is stale: the broker delivers those messages again."""
        channel = self._channel
        if channel is None or generation != self._generation or not channel.is_open:
            self.acks_dropped += len(delivery_tags)
            return False
        if delivery_tags:
            channel.basic_ack(max(delivery_tags), multiple=True)
            self.acks_sent += len(delivery_tags)
        return True

    def pause_reading(self) -> None:
        """Deliver nothing more until resume_reading(); the prefetch bounds what is held."""
        self._paused = True

    def resume_reading(self) -> None:
        """Deliver what arrived during the pause (before returning), then deliver on."""
        self._paused = False
        held = self._held
        while held and not self._paused:
            self._deliver(*held.popleft())

    # -- connection ----------------------------------------------------------------------------

    async def _open(self) -> None:
        params = self._params[self._next % len(self._params)]
        self._next += 1
        where = f"{params.host}:{params.port}"
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()
        closed: asyncio.Future[None] = loop.create_future()

        def on_open(conn: AsyncioConnection) -> None:
            if not opened.done():
                opened.set_result(conn)

        def on_error(_conn: Any, exc: BaseException | str) -> None:
            if not opened.done():
                opened.set_exception(AmqpUnavailable(f"AMQP {where}: {exc}"))

        def on_close(_conn: Any, exc: BaseException) -> None:
            on_error(_conn, exc)
            if not closed.done():
                closed.set_result(None)
            self.connected.clear()

        conn = _Connection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=on_error,
            on_close_callback=on_close,
            custom_ioloop=loop,
        )
        try:
            async with asyncio.timeout(_OPEN_TIMEOUT_S):
                await opened
                channel = await self._declare(conn, where)
        except (TimeoutError, AmqpUnavailable) as exc:
            if conn.is_open:
                conn.close()
            if isinstance(exc, TimeoutError):
                why = f"AMQP {where}: no answer in {_OPEN_TIMEOUT_S:.0f} s"
                raise AmqpUnavailable(why) from exc
            raise
        self._conn, self._channel, self._closed = conn, channel, closed
        self._generation += 1
        self._held.clear()  # of the last channel: the broker delivers them again
        self.node = where
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.basic_consume(self.queue, self._on_message, auto_ack=False)

        def on_delivery(tag: int, key: str, body: bytes) -> None:
            if conn is self._conn:
                self._accept(tag, key.translate(_SWAP), body)

        conn.on_delivery = on_delivery
        conn.fast_channel = channel.channel_number
        self.connected.set()

    def _on_cancelled(self, _frame: object) -> None:
        # The broker ended the consumer (its queue deleted or moved away): nothing more would
        # come on this channel. Reconnecting declares the queue again and consumes anew.
        logger.warning("AMQP %s: the broker cancelled our consumer of %s", self._name, self.queue)
        conn = self._conn
        if conn is not None and conn.is_open:
            conn.close()

    async def _declare(self, conn: AsyncioConnection, where: str) -> pika.channel.Channel:
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[Any]] = []

        def call(start: Callable[[Callable[[Any], None]], object]) -> asyncio.Future[Any]:
            done: asyncio.Future[Any] = loop.create_future()
            pending.append(done)

            def answered(result: object) -> None:
                if not done.done():
                    done.set_result(result)

            start(answered)
            return done

        def on_channel_close(_ch: Any, exc: BaseException) -> None:
            for done in pending:
                if not done.done():
                    done.set_exception(AmqpUnavailable(f"AMQP {where}: {exc}"))
            if conn.is_open and not self._stopping:
                conn.close()  # one channel per connection: a closed channel ends it

        channel: pika.channel.Channel = await call(lambda cb: conn.channel(on_open_callback=cb))
        channel.add_on_close_callback(on_channel_close)
        await call(
            lambda cb: channel.queue_declare(
                self.queue,
                durable=True,
                arguments={"x-queue-type": "quorum", "x-overflow": "reject-publish"},
                callback=cb,
            )
        )
        for key in self.binding_keys:
            await call(partial(channel.queue_bind, self.queue, "amq.topic", key, None))
        await call(lambda cb: channel.basic_qos(prefetch_count=self._prefetch, callback=cb))
        return channel

    async def _keep_connected(self) -> None:
        while not self._stopping:
            closed = self._closed
            if closed is not None:
                await asyncio.shield(closed)
            if self._failure is not None or self._stopping:
                break
            logger.warning("AMQP %s: connection to %s lost; reconnecting", self._name, self.node)
            await self._reconnect()
        if self._failure is not None:
            raise self._failure

    async def _reconnect(self) -> None:
        backoff = Backoff(RECONNECT)
        while True:
            await backoff.sleep()
            try:
                await self._open()
            except AmqpUnavailable as exc:
                logger.warning("AMQP %s: reconnect failed: %s", self._name, exc)
            else:
                self.reconnects += 1
                logger.info("AMQP %s: consuming %s on %s", self._name, self.queue, self.node)
                return

    async def _close(self) -> None:
        conn = self._conn
        closed = self._closed
        self.connected.clear()
        if conn is not None and conn.is_open:
            conn.close()
        if closed is not None:
            try:
                async with asyncio.timeout(_OPEN_TIMEOUT_S):
                    await closed
            except TimeoutError:
                logger.warning("AMQP %s: the connection did not close in time", self._name)

    # -- receive path: runs for every message, keep it lean --------------------------------

    def _on_message(
        self,
        channel: pika.channel.Channel,
        method: pika.spec.Basic.Deliver,
        _props: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        if channel is not self._channel:
            return
        self._accept(method.delivery_tag, method.routing_key.translate(_SWAP), body)

    def _accept(self, tag: int, topic: str, body: bytes) -> None:
        if self._paused:
            self._held.append((tag, topic, body))
        else:
            self._deliver(tag, topic, body)

    def _deliver(self, tag: int, topic: str, body: bytes) -> None:
        try:
            self._on_publish(tag, topic, body)
        except Exception as exc:  # a bug in the ingestor: end the source with it
            logger.exception("AMQP %s: on_publish failed", self._name)
            self._failure = exc
            if self._channel is not None and self._channel.connection.is_open:
                self._channel.connection.close()
