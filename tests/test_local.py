"""The local PostgreSQL and Mosquitto harness starts, serves, survives kills and keeps state."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.client import MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from silobreak.local import LocalMosquitto, LocalPostgres, LocalServiceError, find_binary

# Generous: each wait normally ends in milliseconds; a loaded CI machine is slow, not stuck.
WAIT_S = 10.0


def test_find_binary_names_the_debian_package_when_missing() -> None:
    with pytest.raises(LocalServiceError, match=r"apt-get install -y no-such-server"):
        find_binary("no-such-server")


def test_mosquitto_config_leaves_anonymous_access_to_extra_config(tmp_path: Path) -> None:
    default = LocalMosquitto(tmp_path).config_text()
    closed = LocalMosquitto(tmp_path, extra_config="allow_anonymous false").config_text()

    assert "allow_anonymous true" in default.splitlines()
    assert "allow_anonymous true" not in closed.splitlines()
    assert "allow_anonymous false" in closed.splitlines()


@pytest.mark.integration
def test_postgres_accepts_queries_over_tcp(pg_server: LocalPostgres) -> None:
    with psycopg.connect(pg_server.url) as conn:
        row = conn.execute(
            "SELECT host(inet_server_addr()), inet_server_port(),"
            " current_setting('server_encoding')"
        ).fetchone()

    assert row == ("127.0.0.1", pg_server.port, "UTF8")


@pytest.mark.integration
@pytest.mark.fault
def test_postgres_recovers_committed_rows_after_kill(service_dir: Path) -> None:
    with LocalPostgres(service_dir) as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (1), (2)")

        server.kill()
        assert not server.is_running()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.url, connect_timeout=2)

        server.start()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT sum(v) FROM t").fetchone() == (3,)


@pytest.mark.integration
def test_postgres_context_manager_stops_the_server(service_dir: Path) -> None:
    with LocalPostgres(service_dir) as server:
        assert server.is_running()

    assert not server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url, connect_timeout=2)


@pytest.mark.integration
def test_mosquitto_start_failure_quotes_the_broker_output(service_dir: Path) -> None:
    broker = LocalMosquitto(service_dir, extra_config="no_such_option 1")

    with pytest.raises(LocalServiceError, match="no_such_option"):
        broker.start()
    assert not broker.is_running()


@pytest.mark.integration
def test_mosquitto_delivers_qos1_publish(mqtt_broker: LocalMosquitto, device_prefix: str) -> None:
    topic = f"devices/{device_prefix}lamp/telemetry"
    with (
        _client(mqtt_broker, f"{device_prefix}sub") as sub,
        _client(mqtt_broker, f"{device_prefix}lamp") as pub,
    ):
        sub.subscribe(topic)
        pub.publish(topic, b'{"seq": 1}')

        message = sub.messages.get(timeout=WAIT_S)

    assert (message.topic, message.payload, message.qos) == (topic, b'{"seq": 1}', 1)


@pytest.mark.integration
def test_mosquitto_keeps_persistent_session_queue_across_restart(
    service_dir: Path, device_prefix: str
) -> None:
    topic = f"devices/{device_prefix}lamp/telemetry"
    with LocalMosquitto(service_dir) as broker:
        with _client(broker, f"{device_prefix}ingest", session_expiry=3600) as sub:
            sub.subscribe(topic)
        with _client(broker, f"{device_prefix}lamp") as pub:
            pub.publish(topic, b"queued while the subscriber is away")

        broker.restart()

        with _client(broker, f"{device_prefix}ingest", session_expiry=3600) as sub:
            assert sub.session_present
            message = sub.messages.get(timeout=WAIT_S)

    assert message.payload == b"queued while the subscriber is away"


@pytest.mark.integration
def test_mosquitto_sends_receive_maximum_unacked_and_queues_the_rest(
    mqtt_broker: LocalMosquitto, device_prefix: str
) -> None:
    window, total = 500, 3000  # 2500 behind the window: Mosquitto's default queue holds 1000
    topic = f"devices/{device_prefix}lamp/telemetry"
    with (
        _client(mqtt_broker, f"{device_prefix}sub", receive_maximum=window, manual_ack=True) as sub,
        _client(mqtt_broker, f"{device_prefix}lamp") as pub,
    ):
        sub.subscribe(topic)
        for seq in range(total):
            pub.publish(topic, str(seq).encode(), wait=False)
        pub.wait_all_published()
        # The broker wrote every publish it may send before it acked the last one; a SUBACK
        # on the subscriber's connection comes after them, so they have all arrived.
        sub.subscribe(f"{topic}/sync")
        unacked = [sub.messages.get_nowait() for _ in range(sub.messages.qsize())]
        assert len(unacked) == window

        sub.ack_each_message = True
        for message in unacked:
            sub.ack(message)
        rest = [sub.messages.get(timeout=WAIT_S) for _ in range(total - window)]

    received = [int(m.payload) for m in unacked + rest]
    assert received == list(range(total))


class _Client:
    """A paho MQTT v5 client on a background thread, with waits instead of callbacks."""

    def __init__(
        self,
        broker: LocalMosquitto,
        client_id: str,
        *,
        session_expiry: int,
        receive_maximum: int | None,
        manual_ack: bool,
    ) -> None:
        self.messages: queue.Queue[MQTTMessage] = queue.Queue()
        self.session_present = False
        self.ack_each_message = False
        self._broker = broker
        self._connected = threading.Event()
        self._subacks: queue.Queue[int] = queue.Queue()
        self._published: list[mqtt.MQTTMessageInfo] = []
        self._session_expiry = session_expiry
        self._receive_maximum = receive_maximum
        self._paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        self._paho.on_connect = self._on_connect
        self._paho.on_message = self._on_message
        self._paho.on_subscribe = self._on_subscribe

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry
        if self._receive_maximum is not None:
            properties.ReceiveMaximum = self._receive_maximum
        self._paho.connect("127.0.0.1", self._broker.port, clean_start=False, properties=properties)
        self._paho.loop_start()
        assert self._connected.wait(WAIT_S), "no CONNACK"

    def close(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()

    def subscribe(self, topic: str) -> None:
        _, mid = self._paho.subscribe(topic, qos=1)
        assert self._subacks.get(timeout=WAIT_S) == mid

    def publish(self, topic: str, payload: bytes, *, wait: bool = True) -> None:
        info = self._paho.publish(topic, payload, qos=1)
        self._published.append(info)
        if wait:
            info.wait_for_publish(WAIT_S)

    def wait_all_published(self) -> None:
        for info in self._published:
            info.wait_for_publish(WAIT_S)

    def ack(self, message: MQTTMessage) -> None:
        self._paho.ack(message.mid, message.qos)

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        assert not reason.is_failure, reason
        self.session_present = flags.session_present
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: MQTTMessage) -> None:
        if self.ack_each_message:
            self.ack(message)
        self.messages.put(message)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        self._subacks.put(mid)


@contextmanager
def _client(
    broker: LocalMosquitto,
    client_id: str,
    *,
    session_expiry: int = 0,
    receive_maximum: int | None = None,
    manual_ack: bool = False,
) -> Iterator[_Client]:
    client = _Client(
        broker,
        client_id,
        session_expiry=session_expiry,
        receive_maximum=receive_maximum,
        manual_ack=manual_ack,
    )
    client.connect()
    try:
        yield client
    finally:
        client.close()
