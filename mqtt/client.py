"""A lean asyncio MQTT client: an ack-later subscriber and a pipelining publisher.

It speaks MQTT 5.0, or 3.1.1 when the broker URL says `?protocol=3.1.1`. On 3.1.1 the
features 3.1.1 lacks degrade: a kept session is Clean Session 0 (the broker's own setting
says how long it is kept), the in-flight window is the broker's setting, a PUBACK means
accepted, a SUBACK failure (0x80) gives no reason, and a will is sent by closing the
connection without DISCONNECT.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import TypeVar, cast

from mqtt.codec import (
    CONNECT_TIMEOUT_S,
    MAX_PACKET_ID,
    PINGREQ,
    PUBLISH_CHUNK,
    RECEIVE_MAXIMUM,
    RECONNECT,
    SESSION_EXPIRY_S,
    ConnAck,
    Disconnect,
    Packet,
    PacketReader,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Will,
    encode_connect,
    encode_disconnect,
    encode_pubacks,
    encode_publish,
    encode_subscribe,
)
from mqtt.errors import (
    _V3_CONNACK_NAMES,
    _V3_CONNACK_NAMES_V3,
    BadMqttUrl,
    BrokerUnreachable,
    ConnectionRefused,
    MqttConnectionLost,
    MqttError,
    MqttProtocolError,
    PublishRejected,
    SubscriptionDowngraded,
    SubscriptionRefused,
    reason_name,
)
from mqtt.url import MqttUrl, redact
from retries import Backoff

logger = logging.getLogger(__name__)


# -- connections ------------------------------------------------------------------------------

_T = TypeVar("_T")


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection: the bytes it reads become packets for the client that owns it."""

    def __init__(self, owner: _Client) -> None:
        self.owner = owner
        self.reader = PacketReader(v5=owner.v5)
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: MqttError | None = None  # why we dropped it, when it was our decision
        self.reads = 0  # data_received calls and writes: what the keepalive timer watches
        self.writes = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        try:
            packets = self.reader.feed(data)
        except MqttProtocolError as exc:
            self.abort(exc)
            return
        self.owner._on_packets(self, packets)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        error = self.error
        if error is None:
            why = f": {exc}" if exc is not None else " (closed by the broker)"
            error = MqttConnectionLost(f"connection to MQTT broker {self.owner.broker} lost{why}")
        self.owner._on_lost(self, error)

    def write(self, data: bytes) -> None:
        # uvloop raises on a write to a closing transport; what we drop here (PUBACKs) the
        # broker sends again on the next connection.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.writes += 1

    def abort(self, error: MqttError) -> None:
        self.error = self.error or error
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self.paused = True

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self.paused = False


class _Client:
    """What subscriber and publisher share: CONNECT handshake, keepalive, control packets."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        keepalive: int,
        session_expiry: int,
        receive_maximum: int,
        will: Will | None,
        ssl: _ssl.SSLContext | None,
    ) -> None:
        self.url = MqttUrl.parse(url)
        if ssl is not None and not self.url.tls:
            raise BadMqttUrl(f"an SSL context was given for {redact(url)!r}: write mqtts://")
        self._ssl = ssl if ssl is not None or not self.url.tls else _ssl.create_default_context()
        self.client_id = client_id
        self.broker = self.url.broker
        self.v5 = self.url.v5
        self._keepalive = keepalive
        self._connect = {
            clean: encode_connect(
                client_id,
                username=self.url.username,
                password=self.url.password,
                keepalive=keepalive,
                # 3.1.1 keeps a session only with Clean Session 0, and then until the broker
                # expires it (Mosquitto: persistent_client_expiration); a session expiry of 0
                # (nothing kept) is Clean Session 1 there.
                clean_start=clean if self.v5 else clean or not session_expiry,
                session_expiry=session_expiry,
                receive_maximum=receive_maximum,
                will=will,
                v5=self.v5,
            )
            for clean in (True, False)
        }
        self._conn: _Connection | None = None
        self._connack: asyncio.Future[ConnAck] | None = None
        self._suback: asyncio.Future[SubAck] | None = None
        self._pinger: asyncio.Task[None] | None = None

    async def _handshake(self, *, clean_start: bool) -> tuple[_Connection, ConnAck]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.url.host, self.url.port, ssl=self._ssl
                )
        except OSError as exc:  # TimeoutError and ssl.SSLError are OSErrors too
            why = str(exc) or f"no answer within {CONNECT_TIMEOUT_S:g} s"
            raise BrokerUnreachable(f"cannot connect to MQTT broker {self.broker}: {why}") from exc
        self._conn = conn
        self._connack = loop.create_future()
        conn.write(self._connect[clean_start])
        try:
            connack = self._accepted(await self._answer(self._connack, "CONNECT"))
        except MqttConnectionLost as exc:
            conn.abort(MqttConnectionLost("CONNECT failed"))
            if self.v5 and conn.closed.done() and not conn.reads:
                # RabbitMQ 3.10 closes the connection on an MQTT 5 CONNECT without a CONNACK.
                hint = "; a broker that speaks only MQTT 3.1.1 does that: add ?protocol=3.1.1"
                raise MqttConnectionLost(f"{exc} before answering CONNECT{hint}") from exc
            raise
        except BaseException:
            conn.abort(MqttConnectionLost("CONNECT failed"))
            raise
        keepalive = connack.server_keep_alive  # the server's value overrides ours (§3.2.2.3.14)
        keepalive = self._keepalive if keepalive is None else keepalive
        if keepalive:
            self._pinger = loop.create_task(self._keep_alive(conn, keepalive))
        return conn, connack

    def _accepted(self, connack: ConnAck) -> ConnAck:
        if connack.reason_code != 0:  # the only success code (§3.2.2.2; 3.1.1 §3.2.2.3)
            code = connack.reason_code
            names = _V3_CONNACK_NAMES if self.v5 else _V3_CONNACK_NAMES_V3
            name = names.get(code) or reason_name(code)
            raise ConnectionRefused(code, name, broker=self.broker, client_id=self.client_id)
        return connack

    async def _answer(self, future: asyncio.Future[_T], request: str) -> _T:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await future
        except TimeoutError:
            msg = f"MQTT broker {self.broker} did not answer {request} in {CONNECT_TIMEOUT_S:g} s"
            raise MqttConnectionLost(msg) from None

    async def _keep_alive(self, conn: _Connection, keepalive: int) -> None:
        # A PINGREQ when nothing else went out for keepalive/2 keeps the broker from closing
        # us at 1.5 x keepalive (§3.1.2.10); silence after it while we read means a dead peer.
        writes, reads, pinged = conn.writes, conn.reads, False
        while True:
            await asyncio.sleep(keepalive / 2)
            if pinged and conn.reads == reads and not conn.paused:
                why = f"no PINGRESP from MQTT broker {self.broker} in {keepalive / 2:g} s"
                conn.abort(MqttConnectionLost(why))
                return
            pinged = conn.writes == writes
            if pinged:
                conn.write(PINGREQ)
            writes, reads = conn.writes, conn.reads

    def _on_control(self, conn: _Connection, packet: Packet) -> None:
        if type(packet) is ConnAck:
            if packet.reason_code == 0:
                self._on_connected(conn)
            _resolve(self._connack, packet)
        elif type(packet) is SubAck:
            _resolve(self._suback, packet)
        elif type(packet) is Disconnect:
            said = f" ({packet.reason_string})" if packet.reason_string else ""
            why = f"MQTT broker {self.broker} disconnected us: {reason_name(packet.reason_code)}"
            conn.error = MqttConnectionLost(why + said)
        elif type(packet) is not PingResp:
            logger.debug("MQTT %s: ignored %r", self.client_id, packet)

    def _on_connected(self, conn: _Connection) -> None:
        """Runs as CONNACK is read, before any PUBLISH that follows it in the same read."""

    def _on_packets(self, conn: _Connection, packets: Sequence[Packet]) -> None:
        raise NotImplementedError

    def _on_lost(self, conn: _Connection, error: MqttError) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        _fail(self._connack, error)
        _fail(self._suback, error)
        self._after_lost(error)

    def _after_lost(self, error: MqttError) -> None:
        """What a subclass drops with the connection."""

    def abort(self) -> None:
        """Drop the connection now, without DISCONNECT (a broker that stopped answering)."""
        if self._conn is not None:
            self._conn.abort(MqttConnectionLost(f"connection to MQTT broker {self.broker} aborted"))

    async def _close(self, reason_code: int = 0) -> None:
        conn = self._conn
        if conn is None or conn.transport is None:
            return
        if self.v5:
            conn.write(encode_disconnect(reason_code))
        elif reason_code == 0:
            conn.write(encode_disconnect(v5=False))
        # else 0x04: a 3.1.1 broker sends the will when the connection ends without DISCONNECT
        conn.transport.close()  # sends what is buffered, DISCONNECT last, then closes
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.shield(conn.closed)
        except TimeoutError:
            conn.abort(MqttConnectionLost("DISCONNECT not flushed in time"))


def _resolve(future: asyncio.Future[_T] | None, value: _T) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[_T] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


# -- subscriber -------------------------------------------------------------------------------


class MqttSubscriber(_Client):
    """Receives publishes for `topic_filters` (QoS 1) and acknowledges them when told to.

    `on_publish(packet_id, topic, payload)` runs synchronously, in arrival order, as bytes are
    read; packet id 0 marks a QoS 0 message (nothing to acknowledge). Acknowledge with
    `ack(ids, generation)` using the `generation` current when the messages arrived: after a
    reconnect old ids are void, and the broker sends their messages again (DUP set).
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        topic_filters: list[str],
        on_publish: Callable[[int, str, bytes], None],
        keepalive: int = 30,
        session_expiry: int = SESSION_EXPIRY_S,
        receive_maximum: int = RECEIVE_MAXIMUM,
        clean_start: bool = False,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            url,
            client_id=client_id,
            keepalive=keepalive,
            session_expiry=session_expiry,
            receive_maximum=receive_maximum,
            will=None,
            ssl=ssl,
        )
        self._filters = list(topic_filters)
        self._on_publish = on_publish
        self._clean_start = clean_start
        self.connected = asyncio.Event()  # set while subscribed; cleared when the link drops
        self.publishes_received = 0
        self.duplicates_received = 0  # redeliveries: publishes with DUP set
        self.reconnects = 0
        self.acks_sent = 0
        self.acks_dropped = 0  # acks for an older generation, or while disconnected
        self._generation = 0
        self._ack_conn: _Connection | None = None
        self._paused = False
        self._held: deque[Publish] = deque()  # read before a pause, delivered on resume
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self._failure: Exception | None = None

    @property
    def generation(self) -> int:
        """Counts connections (CONNACKs); packet ids are valid only within their generation."""
        return self._generation

    async def start(self) -> None:
        """Connect and subscribe; then keep the connection (reconnecting) until stop()."""
        if self._runner is not None:
            raise RuntimeError(f"MQTT subscriber {self.client_id!r} was already started")
        conn = await self._open(clean_start=self._clean_start)
        name = f"mqtt subscriber {self.client_id}"
        self._runner = asyncio.create_task(self._keep_connected(conn), name=name)

    async def stop(self) -> None:
        """DISCONNECT and close; with session expiry > 0 the broker keeps the session (3.1.1:
        with Clean Session 0, for as long as the broker keeps sessions)."""
        self._stopping = True
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
            if not runner.cancelled():
                runner.exception()  # logged where it happened; wait_stopped() re-raises it
        await self._close()

    async def wait_stopped(self) -> None:
        """Wait until stop(), or an on_publish that raised, ends the subscriber; re-raise that."""
        if self._runner is None:
            raise RuntimeError(f"MQTT subscriber {self.client_id!r} was not started")
        await asyncio.wait([self._runner])
        if self._failure is not None:
            raise self._failure

    def ack(self, packet_ids: Sequence[int], generation: int) -> bool:
        """Send PUBACKs for `packet_ids` in one write; False (dropped) if `generation` is stale."""
        conn = self._ack_conn
        if conn is None or generation != self._generation:
            self.acks_dropped += len(packet_ids)
            return False
        if packet_ids:
            conn.write(encode_pubacks(packet_ids))
            self.acks_sent += len(packet_ids)
        return True

    def pause_reading(self) -> None:
        """Deliver nothing more until resume_reading(); stop reading the socket meanwhile."""
        self._paused = True
        if self._conn is not None and self.connected.is_set():
            self._conn.pause()

    def resume_reading(self) -> None:
        """Deliver what was read before the pause (before returning), then read on."""
        self._paused = False
        conn = self._conn
        if conn is None:
            return
        if self._held:
            held = list(self._held)
            self._held.clear()
            self._on_packets(conn, held)
        if not self._paused:
            conn.resume()

    async def _open(self, *, clean_start: bool) -> _Connection:
        conn, connack = await self._handshake(clean_start=clean_start)
        if not connack.session_present and not clean_start:
            log = logger.warning if self._generation > 1 else logger.info
            log("MQTT %s: the broker had no session for us; starting a new one", self.client_id)
        self._suback = asyncio.get_running_loop().create_future()
        conn.write(encode_subscribe(1, self._filters, v5=self.v5))
        try:
            self._check_granted(await self._answer(self._suback, "SUBSCRIBE"))
        except BaseException:
            conn.abort(MqttConnectionLost("SUBSCRIBE failed"))
            raise
        self.connected.set()
        if self._paused:
            conn.pause()
        return conn

    def _check_granted(self, suback: SubAck) -> None:
        codes = suback.reason_codes
        if len(codes) != len(self._filters):
            msg = f"SUBACK with {len(codes)} reason codes for {len(self._filters)} filters"
            raise MqttProtocolError(msg)
        for topic_filter, code in zip(self._filters, codes, strict=True):
            if code >= 0x80:
                raise SubscriptionRefused(topic_filter, code, v5=self.v5)
            if code < 1:  # QoS 1 asked; a broker capped at QoS 0 would lose what we drop
                raise SubscriptionDowngraded(topic_filter, code)

    async def _keep_connected(self, conn: _Connection) -> None:
        while True:
            await asyncio.shield(conn.closed)
            if self._stopping:
                break
            conn = await self._reconnect()
        if self._failure is not None:
            raise self._failure

    async def _reconnect(self) -> _Connection:
        backoff = Backoff(RECONNECT)
        while True:
            await backoff.sleep()
            try:
                conn = await self._open(clean_start=False)
            except MqttError as exc:
                logger.warning("MQTT %s: reconnect failed: %s", self.client_id, exc)
            else:
                self.reconnects += 1
                logger.info("MQTT %s: reconnected to %s", self.client_id, self.broker)
                return conn

    def _on_connected(self, conn: _Connection) -> None:
        self._generation += 1
        self._ack_conn = conn

    def _on_packets(self, conn: _Connection, packets: Sequence[Packet]) -> None:
        if conn is not self._conn:
            return
        on_publish = self._on_publish
        held = self._held
        try:
            for packet in packets:
                if type(packet) is Publish:
                    if self._paused or held:
                        held.append(packet)
                        continue
                    self.publishes_received += 1
                    if packet.dup:
                        self.duplicates_received += 1
                    on_publish(packet.packet_id, packet.topic, packet.payload)
                else:
                    self._on_control(conn, packet)
        except Exception as exc:
            # A bug in the caller: reconnecting would only replay the same message into it.
            logger.exception("MQTT %s: on_publish raised; the subscriber stops", self.client_id)
            self._failure = exc
            self._stopping = True
            conn.abort(MqttConnectionLost(f"on_publish raised {exc!r}"))

    def _after_lost(self, error: MqttError) -> None:
        self._ack_conn = None
        self.connected.clear()
        # Their ids die with this connection; the broker sends these messages again.
        self._held.clear()
        if self._runner is not None and not self._stopping:
            logger.warning("MQTT %s: %s; reconnecting", self.client_id, error)


# -- publisher --------------------------------------------------------------------------------


class MqttPublisher(_Client):
    """Publishes with a window of unacknowledged QoS 1 messages (streams' delivery, benchmarks).

    No reconnect: a lost connection fails the waiting calls with MqttConnectionLost; the owner
    starts a new publisher (as streams' MQTT delivery does).
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        window: int = MAX_PACKET_ID,
        keepalive: int = 60,
        will: Will | None = None,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(
            url,
            client_id=client_id,
            keepalive=keepalive,
            session_expiry=0,
            receive_maximum=MAX_PACKET_ID,
            will=will,
            ssl=ssl,
        )
        self.window = window  # lowered to the broker's Receive Maximum on connect
        self.published = 0
        self.acks_received = 0
        # PUBACKs with 0x10 "no matching subscribers": the broker took these and gave them to
        # no one (Mosquitto 2.0 after a restart, until subscribers subscribe again); a device
        # that must not lose them sends them again (docs/reliability.md).
        self.unrouted = 0
        self._inflight: set[int] = set()
        self._next_id = 1
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._rejected: dict[int, int] = {}  # failure reason code -> publishes, since flush()
        self._acked: dict[int, asyncio.Future[int]] = {}  # publish_acked() waiting, by packet id
        self._lost: MqttError | None = None

    @property
    def connected(self) -> bool:
        """Started and not lost: a publisher that lost its connection stays lost."""
        return self._conn is not None

    async def start(self) -> None:
        _, connack = await self._handshake(clean_start=True)
        # More unacknowledged QoS 1 publishes than the broker's Receive Maximum is a
        # protocol error (§3.3.4); Mosquitto advertises its max_inflight_messages (default 20).
        # A 3.1.1 CONNACK advertises nothing: the window stays as given.
        self.window = min(self.window, connack.receive_maximum)

    async def stop(self, *, send_will: bool = False) -> None:
        """DISCONNECT and close; `send_will` asks the broker to publish the will message."""
        await self._close(0x04 if send_will else 0)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Send one message; with QoS 1, first wait for room in the window."""
        _check_qos(qos)
        packet_id = 0
        if qos:
            await self._inflight_at_most(self.window - 1)
            packet_id = self._take_id()
        self._live().write(
            encode_publish(topic, payload, qos=qos, retain=retain, packet_id=packet_id, v5=self.v5)
        )
        self.published += 1

    async def publish_acked(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Send one QoS 1 message and wait for its PUBACK; return its reason code.

        0 or 0x10 "no matching subscribers" (the broker took it); PublishRejected for a
        failure code; MqttConnectionLost when the connection ends before the PUBACK. A 3.1.1
        PUBACK has no reason code: it means the broker took the message, and returns 0.
        """
        await self._inflight_at_most(self.window - 1)
        conn = self._live()
        packet_id = self._take_id()
        acked: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acked[packet_id] = acked
        conn.write(
            encode_publish(topic, payload, qos=1, retain=retain, packet_id=packet_id, v5=self.v5)
        )
        self.published += 1
        code = await acked
        if code >= 0x80:
            why = f"{reason_name(code)} (reason code 0x{code:02X})"
            msg = f"MQTT broker {self.broker} refused a publish to {topic!r}: {why}"
            raise PublishRejected(msg)
        return code

    async def publish_many(
        self, packets: Iterable[tuple[str, bytes]], *, qos: int = 1, retain: bool = False
    ) -> None:
        """Send (topic, payload) pairs, pre-encoded, many per write; flush() awaits the acks."""
        _check_qos(qos)
        source = iter(packets)
        # Refill only once half the window is free, so that each write stays large.
        batch = min(PUBLISH_CHUNK, max(1, self.window // 2))
        v5 = self.v5
        while True:
            room = PUBLISH_CHUNK
            if qos:
                await self._inflight_at_most(self.window - batch)
                room = min(PUBLISH_CHUNK, self.window - len(self._inflight))
            chunk = [
                encode_publish(
                    t, p, qos=qos, retain=retain, packet_id=qos and self._take_id(), v5=v5
                )
                for t, p in islice(source, room)
            ]
            if not chunk:
                return
            self._live().write(b"".join(chunk))
            self.published += len(chunk)

    async def flush(self) -> None:
        """Wait until every QoS 1 publish is acknowledged; raise if the broker refused some."""
        await self._inflight_at_most(0)
        if self._rejected:
            rejected, self._rejected = self._rejected, {}
            counts = ", ".join(f"{n} x {reason_name(code)}" for code, n in rejected.items())
            raise PublishRejected(f"MQTT broker {self.broker} refused publishes: {counts}")

    def _take_id(self) -> int:
        packet_id = self._next_id
        while packet_id in self._inflight:  # an id whose PUBACK is late; the window keeps one free
            packet_id = packet_id % MAX_PACKET_ID + 1
        self._next_id = packet_id % MAX_PACKET_ID + 1
        self._inflight.add(packet_id)
        return packet_id

    async def _inflight_at_most(self, limit: int) -> None:
        while len(self._inflight) > limit:
            self._live()
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((limit, waiter))
            await waiter

    def _live(self) -> _Connection:
        if self._conn is None:
            raise self._lost or MqttConnectionLost(f"MQTT publisher {self.client_id!r} not started")
        return self._conn

    def _on_packets(self, conn: _Connection, packets: Sequence[Packet]) -> None:
        inflight = self._inflight
        for packet in packets:
            if type(packet) is PubAck:
                inflight.discard(packet.packet_id)
                self.acks_received += 1
                if packet.reason_code == 0x10:
                    self.unrouted += 1
                acked = self._acked.pop(packet.packet_id, None)
                if acked is not None:  # its caller hears the reason code, flush() does not
                    _resolve(acked, packet.reason_code)
                elif packet.reason_code >= 0x80:
                    code = packet.reason_code
                    self._rejected[code] = self._rejected.get(code, 0) + 1
            else:
                self._on_control(conn, packet)
        if self._waiters:
            left = len(inflight)
            ready = [w for w in self._waiters if left <= w[0]]
            self._waiters = [w for w in self._waiters if left > w[0]]
            for _, waiter in ready:
                _resolve(waiter, None)

    def _after_lost(self, error: MqttError) -> None:
        self._lost = error  # raised by every later call: this publisher does not reconnect
        for _, waiter in self._waiters:
            _fail(waiter, error)
        self._waiters = []
        for acked in self._acked.values():
            _fail(acked, error)
        self._acked.clear()


def _check_qos(qos: int) -> None:
    # Checked before a packet id is taken: a failed encode must not hold a window slot.
    if qos not in (0, 1):
        raise ValueError(f"this client publishes with QoS 0 or 1, not {qos}")
