"""One device-side MQTT connection (paho) driven by an external selector loop."""

from __future__ import annotations

import logging
import selectors
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devices.topics import STATUS, TELEMETRY, topic
from firmware_sim.errors import BrokerError
from mqtt import BadMqttUrl, MqttUrl

logger = logging.getLogger(__name__)

MqttVersion = Literal["3.1.1", "5"]
MQTT_VERSIONS: Final[tuple[MqttVersion, ...]] = ("5", "3.1.1")
# PUBACK reason code (MQTT 5 §3.4.2.1): the broker took the message but no subscription
# matched, so it went nowhere. Mosquitto 2.0 answers it after a restart, until the ingestors
# subscribe again (it does not keep shared subscriptions over a restart).
NO_MATCHING_SUBSCRIBERS: Final = 0x10
# PUBACK reason codes (MQTT 5 §3.4.2.1) by which the broker refuses a message for good: 0x87
# not authorized (Mosquitto's answer when the ACL denies the topic), 0x97 quota exceeded. Any
# code from 0x80 up is a failure; the message was not published, and sending it again would
# get the same answer, so it is counted as refused and let go.
NOT_AUTHORIZED: Final = 0x87
QUOTA_EXCEEDED: Final = 0x97
_FIRST_FAILURE: Final = 0x80
_TELEMETRY_SUFFIX: Final = "/" + TELEMETRY

# A refused or black-holed broker must not stall the loop for the whole fleet.
CONNECT_TIMEOUT_S: Final = 3.0
# A probe's socket wait per turn: short, so its deadline is kept to within a few ms.
_PROBE_TURN_S: Final = 0.05


# Where the broker is: the project's one broker URL parser, under the simulator's name.
BrokerAddress = MqttUrl


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse a broker URL; BrokerError says what is wrong with it."""
    try:
        return MqttUrl.parse(url)
    except BadMqttUrl as exc:
        raise BrokerError(str(exc)) from None


class Link:
    """A paho client serving one device (or, in load mode, many) with a bounded backlog.

    Readings wait in the backlog while the link is offline or its in-flight window is full;
    when the backlog is full the oldest reading is dropped, as a device's ring buffer does.

    Over MQTT 5, telemetry the broker acknowledges with 0x10 (no matching subscribers) was
    not delivered: it goes back to the front of the backlog, in the order it was sent, and
    the link holds (publishes nothing, buffers what comes) until the runner resumes it after
    a backoff. It then sends one message; when the broker routes that one, the full window
    again. Events are not held: nothing in the platform subscribes to them, so 0x10 is their
    normal answer. Statuses are retained, which the broker keeps whether anyone listens.
    A message the broker refuses (0x87 not authorized, 0x97 quota exceeded, any code from
    0x80) is counted in `refused`, never in `acked`.
    """

    def __init__(
        self,
        *,
        client_id: str,
        device_ids: tuple[str, ...],
        broker: BrokerAddress,
        username: str | None,
        password: str | None,
        selector: selectors.BaseSelector,
        keepalive: int,
        inflight: int,
        capacity: int,
        will: bytes | None,
        on_lost: Callable[[Link], None],
        online: Callable[[], bytes],
        pending_writes: set[Link],
        mqtt_version: MqttVersion = "3.1.1",
        on_hold: Callable[[Link], None] = lambda _link: None,
    ) -> None:
        self.client_id = client_id
        self.device_ids = device_ids
        self.broker = broker
        self.keepalive = keepalive
        self.inflight = inflight
        self.capacity = capacity
        self.backlog: deque[tuple[str, bytes]] = deque()
        self.connected = False
        self.attempts = 0  # reconnects tried since the last success (runner.RECONNECT)
        self.outstanding = 0
        self.status_mids: set[int] = set()
        self.acked = 0
        self.dropped = 0
        # Telemetry acknowledged with 0x10 (each went back to the backlog to be sent again).
        self.unrouted = 0
        # Telemetry and events the broker refused with a failure code (MQTT 5 only).
        self.refused = 0
        # Publishes allowed in flight: `inflight`; 0 while held after a 0x10, 1 once resumed
        # until the broker routes a telemetry message again.
        self.window = inflight
        self.held = False
        self.hold_attempts = 0
        # Messages put back at the front of the backlog during the current hold.
        self._returned = 0
        self._v5 = mqtt_version == "5"
        # mid -> (topic, payload) of what is in flight, to put back on a 0x10 (MQTT 5 only).
        self._in_flight: dict[int, tuple[str, bytes]] = {}
        self._selector = selector
        self._on_lost = on_lost
        self._on_hold = on_hold
        self._online = online
        # Links with bytes to send; the loop writes them directly after each turn, and only
        # asks epoll for writability when the socket is full (saves 2 syscalls a message).
        self._pending_writes = pending_writes
        self._write_armed = False
        self.client = _client(client_id, broker, username, password, inflight, mqtt_version)
        # A connection has one last will, so only a one-device link can carry its device's.
        if will is not None and len(device_ids) == 1:
            self.client.will_set(topic(device_ids[0], STATUS), will, qos=1, retain=True)
        self.client.on_socket_open = self._socket_open
        self.client.on_socket_close = self._socket_close
        self.client.on_socket_register_write = self._want_write
        self.client.on_socket_unregister_write = self._done_writing
        self.client.on_connect = self._connected
        self.client.on_disconnect = self._disconnected
        self.client.on_publish = self._acknowledged_v5 if self._v5 else self._acknowledged

    def connect(self) -> None:
        """Open the TCP connection and send CONNECT; the CONNACK arrives through the loop."""
        try:
            if self._v5:
                # No session expiry: the session ends with the connection, as 3.1.1's clean one.
                self.client.connect(
                    self.broker.host, self.broker.port, keepalive=self.keepalive, clean_start=True
                )
            else:
                self.client.connect(self.broker.host, self.broker.port, keepalive=self.keepalive)
        except (OSError, ssl.SSLError) as exc:
            raise BrokerError(f"{self.client_id}: cannot reach {self.broker}: {exc}") from exc

    def send(self, topic_name: str, payload: bytes) -> None:
        """Publish now if online with room in the window, else keep it in the backlog."""
        if self.connected and not self.backlog and self.outstanding < self.window:
            self._publish(topic_name, payload)
            return
        if len(self.backlog) >= self.capacity:
            self._drop_oldest()
        self.backlog.append((topic_name, payload))

    def flush(self) -> int:
        """Publish from the backlog while the window has room; returns how many went out."""
        sent = 0
        while self.connected and self.backlog and self.outstanding < self.window:
            topic_name, payload = self.backlog.popleft()
            self._publish(topic_name, payload)
            sent += 1
        return sent

    def publish_status(self, payload: bytes) -> None:
        for device_id in self.device_ids:
            info = self.client.publish(topic(device_id, STATUS), payload, qos=1, retain=True)
            self.status_mids.add(info.mid)

    def service(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self.client.loop_read()
        if mask & selectors.EVENT_WRITE and self.client.socket() is not None:
            self.write()

    def write(self) -> None:
        """Send what paho has queued; wait for writability only if the socket is full."""
        sock = self.client.socket()
        if sock is None:
            return
        self.client.loop_write()
        if self.client.want_write() and not self._write_armed:
            self._write_armed = True
            self._modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def resume(self) -> None:
        """End a hold: send the oldest message, and the full window once one is routed."""
        self.held = False
        self.window = 1
        self.flush()

    @property
    def idle(self) -> bool:
        return not self.backlog and self.outstanding == 0 and not self.status_mids

    def _publish(self, topic_name: str, payload: bytes) -> None:
        info = self.client.publish(topic_name, payload, qos=1)
        self.outstanding += 1
        if self._v5:
            self._in_flight[info.mid] = (topic_name, payload)

    def _drop_oldest(self) -> None:
        self.backlog.popleft()
        self.dropped += 1
        if self._returned:
            self._returned -= 1

    def _put_back(self, message: tuple[str, bytes]) -> None:
        """A message no subscriber took goes back to the backlog; the link holds."""
        self.unrouted += 1
        if not self.held:
            # What was in flight is older than all the backlog, and PUBACKs come in the order
            # of the publishes: each returning message goes after the ones before it.
            self.held = True
            self.window = 0
            self._returned = 0
            self._on_hold(self)
        self.backlog.insert(self._returned, message)
        self._returned += 1
        while len(self.backlog) > self.capacity:
            self._drop_oldest()

    # paho callbacks ---------------------------------------------------------------------

    def _socket_open(self, _client: Any, _userdata: Any, sock: Any) -> None:
        self._write_armed = False
        self._selector.register(sock, selectors.EVENT_READ, self)

    def _socket_close(self, _client: Any, _userdata: Any, sock: Any) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            logger.debug("%s: socket was not registered", self.client_id)

    def _want_write(self, _client: Any, _userdata: Any, _sock: Any) -> None:
        self._pending_writes.add(self)

    def _done_writing(self, _client: Any, _userdata: Any, sock: Any) -> None:
        if self._write_armed:
            self._write_armed = False
            self._modify(sock, selectors.EVENT_READ)

    def _modify(self, sock: Any, events: int) -> None:
        try:
            self._selector.modify(sock, events, self)
        except (KeyError, ValueError):
            logger.debug("%s: socket not registered for %d", self.client_id, events)

    def _connected(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            logger.warning("%s: broker refused the connection: %s", self.client_id, reason)
            return
        self.connected = True
        self.attempts = 0
        self.publish_status(self._online())
        self.flush()

    def _disconnected(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self.connected:
            logger.info("%s: disconnected: %s", self.client_id, reason)
        self.connected = False
        self._on_lost(self)

    def _acknowledged(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        if mid in self.status_mids:
            self.status_mids.discard(mid)
            return
        self.outstanding -= 1
        self.acked += 1
        self.flush()

    def _acknowledged_v5(self, _c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
        if mid in self.status_mids:
            self.status_mids.discard(mid)
            return
        self.outstanding -= 1
        message = self._in_flight.pop(mid, None)
        if reason.value >= _FIRST_FAILURE:
            self.refused += 1
            logger.debug("%s: broker refused message %d: %s", self.client_id, mid, reason)
            self.flush()
            return
        if message is not None and message[0].endswith(_TELEMETRY_SUFFIX):
            if reason.value == NO_MATCHING_SUBSCRIBERS:
                self._put_back(message)
                return
            if self.hold_attempts and not self.held:
                # Routed again after a hold: back to the full window, backoff from the start.
                self.window = self.inflight
                self.hold_attempts = 0
        self.acked += 1
        self.flush()


def connect_refusal(
    broker: BrokerAddress,
    *,
    client_id: str,
    username: str | None,
    password: str | None,
    timeout: float,
) -> str | None:
    """Connect once as a device does and hang up: None when accepted, else the broker's reason.

    BrokerError when the broker cannot be reached at all.
    """
    client = _client(client_id, broker, username, password, inflight=1)
    answer: list[str | None] = []

    def connected(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        answer.append(str(reason) if reason.is_failure else None)

    client.on_connect = connected
    try:
        client.connect(broker.host, broker.port, keepalive=max(5, round(timeout)))
    except (OSError, ssl.SSLError) as exc:
        raise BrokerError(f"cannot reach {broker}: {exc}") from exc
    deadline = time.monotonic() + timeout
    try:
        while not answer and time.monotonic() < deadline:
            if client.loop(timeout=_PROBE_TURN_S) != mqtt.MQTT_ERR_SUCCESS and not answer:
                return "the broker closed the connection without a CONNACK"
    finally:
        client.disconnect()
    return answer[0] if answer else f"no CONNACK within {timeout:g} s"


def _client(
    client_id: str,
    broker: BrokerAddress,
    username: str | None,
    password: str | None,
    inflight: int,
    mqtt_version: MqttVersion = "3.1.1",
) -> mqtt.Client:
    if mqtt_version == "5":
        # MQTT 5: PUBACKs carry a reason code, so a device learns that nobody took a message.
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
    else:
        # MQTT 3.1.1: what most field firmware speaks; a message no subscription matches is
        # acknowledged as any other and dropped, so the device cannot know.
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
    client.connect_timeout = CONNECT_TIMEOUT_S
    client.max_inflight_messages_set(inflight)
    if username is not None:
        client.username_pw_set(username, password)
    if broker.tls:
        client.tls_set()
    return client
