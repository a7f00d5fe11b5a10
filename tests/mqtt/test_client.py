"""The MQTT 5.0 wire client: the codec byte for byte, and the clients against a real Mosquitto."""

from __future__ import annotations

import asyncio
import ssl
import struct
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from mqtt import MqttPublisher, MqttSubscriber
from mqtt.codec import (
    ConnAck,
    Disconnect,
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
    BadMqttUrl,
    BrokerUnreachable,
    ConnectionRefused,
    MqttConnectionLost,
    MqttError,
    MqttProtocolError,
    PublishRejected,
)
from silobreak.local import LocalMosquitto, free_port
from tests.support.proxy import Proxy

T = TypeVar("T")
# Generous for a loaded CI machine; a healthy local broker answers in milliseconds.
DEADLINE_S = 15.0


# -- codec ------------------------------------------------------------------------------------


def test_publish_round_trips_through_the_reader_split_at_every_byte() -> None:
    packets = [
        encode_publish("devices/lamp-1/telemetry", b'{"seq": 1}', qos=1, packet_id=1),
        encode_publish("a/b", b"", qos=0, retain=True),
        encode_publish("devices/x/telemetry", b"p" * 200, qos=1, packet_id=65535, dup=True),
        encode_publish("t/\u00e9", b"\x00\xff", qos=1, packet_id=300),
    ]
    stream = b"".join(packets)
    expected = [
        Publish(1, "devices/lamp-1/telemetry", b'{"seq": 1}', 1, False),
        Publish(0, "a/b", b"", 0, False),
        Publish(65535, "devices/x/telemetry", b"p" * 200, 1, True),
        Publish(300, "t/\u00e9", b"\x00\xff", 1, False),
    ]
    for cut in range(len(stream) + 1):
        reader = PacketReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == expected, cut
    reader = PacketReader()
    assert [p for i in range(len(stream)) for p in reader.feed(stream[i : i + 1])] == expected


@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=40),
            st.binary(max_size=300),
            st.integers(0, 1),
            st.integers(1, 65535),
            st.booleans(),
        ),
        min_size=1,
        max_size=20,
    ),
    st.lists(st.integers(1, 50), max_size=40),
)
def test_any_publishes_survive_any_split_of_the_stream(
    fields: list[tuple[str, bytes, int, int, bool]], sizes: list[int]
) -> None:
    stream = b"".join(
        encode_publish(t, p, qos=q, packet_id=i if q else 0, dup=d) for t, p, q, i, d in fields
    )
    reader, got, at = PacketReader(), [], 0
    for size in sizes:
        got += reader.feed(stream[at : at + size])
        at += size
    got += reader.feed(stream[at:])
    assert got == [Publish(i if q else 0, t, p, q, d) for t, p, q, i, d in fields]


@pytest.mark.parametrize(
    ("payload_size", "length_bytes"),
    [(121, 1), (122, 2), (16_377, 2), (16_378, 3), (2_097_145, 3), (2_097_146, 4)],
)
def test_remaining_length_takes_one_to_four_bytes(payload_size: int, length_bytes: int) -> None:
    # topic "t" (2+1 bytes) + packet id (2) + empty properties (1) = 6 bytes before the payload
    packet = encode_publish("t", b"x" * payload_size, qos=1, packet_id=9)
    assert len(packet) == 1 + length_bytes + 6 + payload_size
    reader = PacketReader()
    for cut in (1, 2, length_bytes, length_bytes + 1, len(packet) // 2, len(packet) - 1):
        assert reader.feed(packet[:cut]) == []
        assert reader.feed(packet[cut:]) == [Publish(9, "t", b"x" * payload_size, 1, False)]


def test_reader_returns_every_packet_of_one_read_in_order() -> None:
    stream = b"".join(encode_publish("t", b"%d" % n, qos=1, packet_id=n) for n in range(1, 501))
    stream += b"\xd0\x00"  # PINGRESP
    packets = PacketReader().feed(stream)
    assert [p.payload for p in packets[:-1] if isinstance(p, Publish)] == [
        b"%d" % n for n in range(1, 501)
    ]
    assert packets[-1] == PingResp()


def test_reader_skips_publish_properties_of_any_length() -> None:
    user_property = b"\x26" + struct.pack(">H", 3) + b"key" + struct.pack(">H", 200) + b"v" * 200
    for props in (b"\x01\x01", b"\x02\x00\x00\x00\x3c" + user_property):
        length = bytes([len(props)]) if len(props) < 128 else bytes([len(props) & 0x7F | 0x80, 1])
        body = struct.pack(">H", 3) + b"a/b" + struct.pack(">H", 77) + length + props + b"data"
        packet = bytes([0x32, len(body) & 0x7F | 0x80, len(body) >> 7]) + body
        assert PacketReader().feed(packet) == [Publish(77, "a/b", b"data", 1, False)]


def test_reader_rejects_a_remaining_length_of_five_bytes() -> None:
    with pytest.raises(MqttProtocolError, match="longer than 4 bytes"):
        PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")


def test_reader_parses_connack_properties() -> None:
    props = b"\x21\x00\x14" + b"\x12\x00\x03abc" + b"\x13\x00\x0a" + b"\x22\x00\x0a"
    packet = b"\x20" + bytes([2 + 1 + len(props), 0x01, 0x00, len(props)]) + props
    assert PacketReader().feed(packet) == [
        ConnAck(True, 0, receive_maximum=20, assigned_client_id="abc", server_keep_alive=10)
    ]
    # Mosquitto's answer to a bad password; and a 3.1.1 broker's two-byte CONNACK.
    assert PacketReader().feed(b"\x20\x03\x00\x86\x00") == [ConnAck(False, 0x86)]
    assert PacketReader().feed(b"\x20\x02\x00\x01") == [ConnAck(False, 1)]


def test_reader_parses_suback_puback_and_disconnect() -> None:
    reason = b"\x1f\x00\x04full"
    stream = (
        b"\x90\x05\x00\x01\x00\x01\x87"  # SUBACK id 1: granted QoS 1, not authorized
        b"\x40\x02\x00\x07"  # PUBACK id 7, short form
        b"\x40\x04\x00\x08\x10\x00"  # PUBACK id 8, "no matching subscribers"
        b"\xe0" + bytes([2 + len(reason), 0x97, len(reason)]) + reason
    )
    assert PacketReader().feed(stream) == [
        SubAck(1, (0x01, 0x87)),
        PubAck(7, 0),
        PubAck(8, 0x10),
        Disconnect(0x97, "full"),
    ]


def test_connect_is_encoded_as_the_spec_lays_it_out() -> None:
    will = Will("devices/d1/status", b"off", qos=1, retain=True)
    packet = encode_connect(
        "d1",
        username="u",
        password="p",
        keepalive=30,
        clean_start=False,
        session_expiry=3600,
        receive_maximum=5000,
        will=will,
    )
    body = (
        b"\x00\x04MQTT\x05"
        + bytes([0x80 | 0x40 | 0x20 | 0x08 | 0x04])  # user, password, will retain/QoS 1/flag
        + b"\x00\x1e"  # keepalive 30
        + b"\x08\x21\x13\x88\x11\x00\x00\x0e\x10"  # receive maximum 5000, session expiry 3600
        + b"\x00\x02d1"
        + b"\x00\x00\x11devices/d1/status\x00\x03off"  # no will properties, topic, payload
        + b"\x00\x01u\x00\x01p"
    )
    assert packet == bytes([0x10, len(body)]) + body
    # clean start, keepalive 60 s, receive maximum 65535 (Mosquitto needs it said), client id
    assert encode_connect("c")[9:] == b"\x02\x00\x3c\x03\x21\xff\xff\x00\x01c"


def test_subscribe_pubacks_and_disconnect_are_encoded_as_the_spec_lays_them_out() -> None:
    assert encode_subscribe(1, ["a/#", "$share/g/b"]) == (
        b"\x82\x16\x00\x01\x00" + b"\x00\x03a/#\x11" + b"\x00\x0a$share/g/b\x11"
    )
    assert encode_pubacks([1, 0, 0x1234]) == b"\x40\x02\x00\x01\x40\x02\x12\x34"
    assert encode_pubacks([]) == b""
    assert encode_disconnect() == b"\xe0\x00"
    assert encode_disconnect(0x04) == b"\xe0\x01\x04"
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        encode_pubacks([65536])


def test_qos1_publish_needs_a_packet_id() -> None:
    with pytest.raises(ValueError, match="packet id"):
        encode_publish("t", b"", qos=1)


# -- errors ------------------------------------------------------------------------------


def test_ssl_context_with_a_plain_url_is_refused() -> None:
    with pytest.raises(BadMqttUrl, match="mqtts://"):
        MqttPublisher("mqtt://h", client_id="c", ssl=ssl.create_default_context())


def test_connection_refused_names_the_reason() -> None:
    error = ConnectionRefused(0x86, "bad user name or password", broker="h:1", client_id="c")
    assert str(error) == (
        "MQTT broker h:1 refused client 'c': bad user name or password (reason code 0x86);"
        " check the user name and password"
    )
    assert isinstance(error, MqttError)


# -- against Mosquitto -----------------------------------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S}s waiting for {what}")
        await asyncio.sleep(0.005)


class Received:
    """What a subscriber was handed, in order: (packet_id, topic, payload)."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, str, bytes]] = []

    def __call__(self, packet_id: int, topic: str, payload: bytes) -> None:
        self.messages.append((packet_id, topic, payload))

    @property
    def payloads(self) -> list[bytes]:
        return [m[2] for m in self.messages]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    with LocalMosquitto(tmp_path_factory.mktemp("mosquitto"), persistence=False) as mosquitto:
        yield mosquitto


@pytest.fixture
def topic() -> str:
    return f"test/{uuid.uuid4().hex}"


def client_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def subscriber(url: str, name: str, topic_filter: str, **options: Any) -> MqttSubscriber:
    received = Received()
    return MqttSubscriber(
        url,
        client_id=name,
        topic_filters=[topic_filter],
        on_publish=received,
        **options,
    )


def received_by(sub: MqttSubscriber) -> Received:
    on_publish = sub._on_publish
    assert isinstance(on_publish, Received)
    return on_publish


async def publish(url: str, messages: list[tuple[str, bytes]]) -> MqttPublisher:
    pub = MqttPublisher(url, client_id=client_id("pub"))
    await pub.start()
    await pub.publish_many(messages)
    await pub.flush()
    await pub.stop()
    return pub


def paho_publish(port: int, topic: str, payloads: list[bytes]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, p, qos=1) for p in payloads]
        for info in infos:
            info.wait_for_publish(DEADLINE_S)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
@pytest.mark.parametrize("runner", [run, asyncio.run], ids=["uvloop", "asyncio"])
def test_subscriber_receives_qos1_messages_from_paho_in_order(
    broker: LocalMosquitto, topic: str, runner: Callable[[Awaitable[None]], None]
) -> None:
    payloads = [b'{"seq": %d}' % n for n in range(300)]

    async def go() -> None:
        sub = subscriber(broker.url, client_id("sub"), f"{topic}/#")
        await sub.start()
        try:
            await asyncio.to_thread(paho_publish, broker.port, f"{topic}/d1/telemetry", payloads)
            got = received_by(sub)
            await wait_until(lambda: len(got.messages) >= 300, "300 messages")
            assert got.payloads == payloads
            assert {t for _, t, _ in got.messages} == {f"{topic}/d1/telemetry"}
            assert all(0 < i <= 65535 for i, _, _ in got.messages)
            assert (sub.generation, sub.publishes_received, sub.reconnects) == (1, 300, 0)
        finally:
            await sub.stop()

    runner(go())


@pytest.mark.integration
def test_unacked_messages_come_again_with_dup_and_same_ids_after_a_cut(
    broker: LocalMosquitto, topic: str
) -> None:
    async def go() -> None:
        async with Proxy(broker.port) as proxy:
            # A window of 5: the broker sends more only for our PUBACKs, which shows when it
            # has taken them (Mosquitto 2.0.11 then sends all it holds, not just 3 more).
            sub = subscriber(proxy.url, client_id("sub"), topic, receive_maximum=5)
            got = received_by(sub)
            await sub.start()
            try:
                await publish(broker.url, [(topic, b"%d" % n) for n in range(10)])
                await wait_until(lambda: len(got.messages) == 5, "the first 5")
                assert sub.ack([got.messages[n][0] for n in range(3)], sub.generation)
                await wait_until(lambda: len(got.messages) >= 8, "more after 3 acks")
                sent = len(got.messages)
                first_ids = {p: i for i, _, p in got.messages}
                proxy.cut()
                await wait_until(
                    lambda: sub.generation == 2 and sub.connected.is_set(), "reconnect"
                )
                await publish(broker.url, [(topic, b"end")])
                acked = sent

                def ack_and_check_for_the_end() -> bool:  # the window of 5 needs acks to move
                    nonlocal acked
                    assert sub.ack([m[0] for m in got.messages[acked:]], sub.generation)
                    acked = len(got.messages)
                    return got.payloads[-1:] == [b"end"]

                await wait_until(ack_and_check_for_the_end, "the end marker")
            finally:
                await sub.stop()
        again = got.messages[sent:-1]
        assert [p for _, _, p in again] == [b"%d" % n for n in range(3, 10)]
        assert all(first_ids[p] == i for i, _, p in again if p in first_ids)  # same ids
        assert sub.duplicates_received == sent - 3  # in flight at the cut, and not acked
        assert sub.reconnects == 1

    run(go())


@pytest.mark.integration
def test_an_ack_from_an_older_generation_is_dropped(broker: LocalMosquitto, topic: str) -> None:
    name = client_id("sub")

    async def go() -> None:
        async with Proxy(broker.port) as proxy:
            sub = subscriber(proxy.url, name, topic)
            got = received_by(sub)
            await sub.start()
            await publish(broker.url, [(topic, b"%d" % n) for n in range(4)])
            await wait_until(lambda: len(got.messages) == 4, "4 messages")
            old_ids, old_generation = [m[0] for m in got.messages], sub.generation
            proxy.cut()
            await wait_until(lambda: len(got.messages) == 8, "4 redelivered")
            # Same ids as the redelivered messages: written, they would acknowledge those.
            assert [m[0] for m in got.messages[4:]] == old_ids
            assert not sub.ack(old_ids, old_generation)
            assert sub.acks_dropped == 4
            await sub.stop()
        # A new process with the same client id gets them a third time: nothing acked them.
        again = subscriber(broker.url, name, topic)
        await again.start()
        try:
            await wait_until(lambda: len(received_by(again).messages) == 4, "4 again")
            assert received_by(again).payloads == [b"%d" % n for n in range(4)]
            assert again.ack([m[0] for m in received_by(again).messages], again.generation)
        finally:
            await again.stop()

    run(go())


@pytest.mark.integration
def test_a_stopped_subscriber_keeps_its_session_and_backlog(
    broker: LocalMosquitto, topic: str
) -> None:
    name = client_id("sub")

    async def go() -> None:
        first = subscriber(broker.url, name, topic)
        await first.start()
        await publish(broker.url, [(topic, b"a"), (topic, b"b")])
        await wait_until(lambda: len(received_by(first).messages) == 2, "a and b")
        assert first.ack([received_by(first).messages[0][0]], first.generation)
        await first.stop()
        await publish(broker.url, [(topic, b"c")])
        second = subscriber(broker.url, name, topic)
        await second.start()
        try:
            await wait_until(lambda: len(received_by(second).messages) == 2, "b and c")
            await publish(broker.url, [(topic, b"d")])
            await wait_until(lambda: len(received_by(second).messages) == 3, "d")
            assert received_by(second).payloads == [b"b", b"c", b"d"]
            assert second.duplicates_received == 1
        finally:
            await second.stop()

    run(go())


@pytest.mark.integration
def test_two_subscribers_of_a_shared_subscription_split_the_messages(
    broker: LocalMosquitto, topic: str
) -> None:
    shared = f"$share/g{uuid.uuid4().hex[:6]}/{topic}/+/telemetry"

    async def go() -> None:
        subs = [subscriber(broker.url, client_id(f"ingest{n}"), shared) for n in range(2)]
        for sub in subs:
            await sub.start()
        try:
            await publish(broker.url, [(f"{topic}/d{n}/telemetry", b"%d" % n) for n in range(200)])
            await wait_until(lambda: sum(s.publishes_received for s in subs) == 200, "200")
        finally:
            for sub in subs:
                await sub.stop()
        one, two = (set(received_by(s).payloads) for s in subs)
        assert one and two
        assert not one & two
        assert one | two == {b"%d" % n for n in range(200)}

    run(go())


@pytest.mark.integration
def test_pause_reading_holds_publishes_until_resume(broker: LocalMosquitto, topic: str) -> None:
    async def go() -> None:
        got: list[bytes] = []

        def on_publish(packet_id: int, topic: str, payload: bytes) -> None:
            got.append(payload)
            if len(got) == 3:
                sub.pause_reading()

        sub = MqttSubscriber(
            broker.url, client_id=client_id("sub"), topic_filters=[topic], on_publish=on_publish
        )
        await sub.start()
        try:
            await publish(broker.url, [(topic, b"%d" % n) for n in range(50)])
            await wait_until(lambda: len(got) == 3, "3 messages")
            await asyncio.sleep(0.2)  # time enough for the other 47, had reading gone on
            assert len(got) == 3
            sub.resume_reading()
            await wait_until(lambda: len(got) == 50, "all 50")
            assert got == [b"%d" % n for n in range(50)]
        finally:
            await sub.stop()

    run(go())


@pytest.mark.integration
def test_an_on_publish_that_raises_stops_the_subscriber(broker: LocalMosquitto, topic: str) -> None:
    def on_publish(packet_id: int, topic: str, payload: bytes) -> None:
        raise ZeroDivisionError(payload)

    async def go() -> None:
        sub = MqttSubscriber(
            broker.url, client_id=client_id("sub"), topic_filters=[topic], on_publish=on_publish
        )
        await sub.start()
        await publish(broker.url, [(topic, b"boom")])
        with pytest.raises(ZeroDivisionError):
            await asyncio.wait_for(sub.wait_stopped(), DEADLINE_S)
        assert not sub.connected.is_set()
        assert sub.reconnects == 0
        await sub.stop()

    run(go())


@pytest.mark.integration
@pytest.mark.slow
def test_an_idle_subscriber_stays_connected_by_pinging(broker: LocalMosquitto, topic: str) -> None:
    async def go() -> None:
        sub = subscriber(broker.url, client_id("sub"), topic, keepalive=1)
        await sub.start()
        try:
            # Without a PINGREQ the broker closes us 1.5 keepalives after the SUBSCRIBE.
            await asyncio.sleep(2.5)
            await publish(broker.url, [(topic, b"still here")])
            await wait_until(lambda: sub.publishes_received == 1, "the message")
            assert (sub.generation, sub.reconnects) == (1, 0)
        finally:
            await sub.stop()

    run(go())


@pytest.mark.integration
@pytest.mark.fault
def test_a_silent_broker_is_detected_and_the_subscriber_reconnects(
    broker: LocalMosquitto, topic: str
) -> None:
    async def go() -> None:
        async with Proxy(broker.port) as proxy:
            sub = subscriber(proxy.url, client_id("sub"), topic, keepalive=1)
            await sub.start()
            try:
                proxy.freeze()
                await wait_until(lambda: sub.generation == 2 and sub.connected.is_set(), "gen 2")
                await publish(broker.url, [(topic, b"after")])
                await wait_until(lambda: received_by(sub).payloads == [b"after"], "the message")
                assert sub.reconnects == 1
            finally:
                await sub.stop()

    run(go())


@pytest.mark.integration
def test_publisher_flush_waits_for_every_ack(broker: LocalMosquitto, topic: str) -> None:
    async def go() -> None:
        pub = MqttPublisher(broker.url, client_id=client_id("pub"), window=50)
        await pub.start()
        try:
            for n in range(120):
                await pub.publish(topic, b"%d" % n)
            await pub.publish_many((topic, b"m") for _ in range(1000))
            await pub.flush()
            assert (pub.published, pub.acks_received) == (1120, 1120)
            assert pub.window == 50
        finally:
            await pub.stop()

    run(go())


@pytest.mark.integration
def test_publish_acked_returns_each_pubacks_reason_code(broker: LocalMosquitto, topic: str) -> None:
    async def go() -> None:
        pub = MqttPublisher(broker.url, client_id=client_id("pub"))
        await pub.start()
        sub = subscriber(broker.url, client_id("sub"), topic, clean_start=True, session_expiry=0)
        try:
            assert await pub.publish_acked(topic, b"nobody") == 0x10  # no matching subscribers
            await sub.start()
            assert await pub.publish_acked(topic, b"someone") == 0
            await wait_until(lambda: received_by(sub).payloads == [b"someone"], "the message")
            assert (pub.acks_received, pub.unrouted) == (2, 1)
            await pub.flush()  # the caller heard both codes; nothing is left for flush()
        finally:
            await sub.stop()
            await pub.stop()

    run(go())


@pytest.mark.integration
def test_publish_acked_fails_when_the_connection_goes_before_its_puback(
    broker: LocalMosquitto, topic: str
) -> None:
    async def go() -> None:
        async with Proxy(broker.port) as proxy:
            pub = MqttPublisher(proxy.url, client_id=client_id("pub"))
            await pub.start()
            assert await pub.publish_acked(topic, b"before") in (0, 0x10)
            proxy.freeze()  # from here no PUBACK can come
            waiting = asyncio.create_task(pub.publish_acked(topic, b"during"))
            await wait_until(lambda: pub.published == 2, "the second publish")
            assert not waiting.done()
            pub.abort()
            with pytest.raises(MqttConnectionLost):
                await waiting
            assert not pub.connected
            with pytest.raises(MqttConnectionLost):
                await pub.publish_acked(topic, b"after")

    run(go())


@pytest.mark.integration
def test_a_qos0_message_comes_with_packet_id_0_and_needs_no_ack(
    broker: LocalMosquitto, topic: str
) -> None:
    async def go() -> None:
        sub = subscriber(broker.url, client_id("sub"), topic)
        await sub.start()
        pub = MqttPublisher(broker.url, client_id=client_id("pub"))
        await pub.start()
        try:
            await pub.publish(topic, b"q0", qos=0)
            await pub.publish(topic, b"q1", qos=1)
            await pub.flush()
            await wait_until(lambda: len(received_by(sub).messages) == 2, "both")
            (id0, _, p0), (id1, _, p1) = received_by(sub).messages
            assert (id0, p0, p1) == (0, b"q0", b"q1")
            assert id1 > 0
            assert sub.ack([id0, id1], sub.generation)
            with pytest.raises(ValueError, match="QoS 0 or 1"):
                await pub.publish(topic, b"", qos=2)
            await pub.flush()  # the refused QoS 2 publish holds no window slot
        finally:
            await pub.stop()
            await sub.stop()

    run(go())


@pytest.mark.integration
def test_publisher_will_is_published_when_asked_on_stop(broker: LocalMosquitto, topic: str) -> None:
    async def go() -> None:
        sub = subscriber(broker.url, client_id("sub"), topic)
        await sub.start()
        try:
            will = Will(topic, b'{"state": "offline"}', qos=1)
            pub = MqttPublisher(broker.url, client_id=client_id("dev"), will=will)
            await pub.start()
            await pub.publish(topic, b'{"state": "online"}')
            await pub.flush()
            await pub.stop(send_will=True)
            await wait_until(lambda: len(received_by(sub).messages) == 2, "the will")
            assert received_by(sub).payloads == [b'{"state": "online"}', b'{"state": "offline"}']
        finally:
            await sub.stop()

    run(go())


@pytest.fixture(scope="module")
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    base = tmp_path_factory.mktemp("mosquitto-auth")
    passwords = base / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "ingest", "right"], check=True)
    config = f"allow_anonymous false\npassword_file {passwords}\n"
    with LocalMosquitto(base, persistence=False, extra_config=config) as mosquitto:
        yield mosquitto


@pytest.mark.integration
@pytest.mark.parametrize(
    ("credentials", "code", "name"),
    # Mosquitto 2.0 answers a wrong password as it does a missing one: not authorized.
    [("ingest:wrong@", 0x87, "not authorized"), ("", 0x87, "not authorized")],
)
def test_a_refused_connection_says_why(
    password_broker: LocalMosquitto, credentials: str, code: int, name: str
) -> None:
    url = f"mqtt://{credentials}127.0.0.1:{password_broker.port}"

    async def go() -> None:
        sub = subscriber(url, "ingest-1", "t")
        with pytest.raises(ConnectionRefused) as caught:
            await sub.start()
        assert (caught.value.reason_code, caught.value.reason_name) == (code, name)
        assert str(caught.value) == (
            f"MQTT broker 127.0.0.1:{password_broker.port} refused client 'ingest-1': "
            f"{name} (reason code 0x{code:02X}); check the user name and password"
        )

    run(go())


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    base = tmp_path_factory.mktemp("mosquitto-acl")
    passwords, acl = base / "passwords", base / "acl"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "streams", "pw"], check=True)
    acl.write_text("user streams\ntopic readwrite allowed/#\n")
    config = f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
    with LocalMosquitto(base, persistence=False, extra_config=config) as mosquitto:
        yield mosquitto


@pytest.mark.integration
def test_publish_acked_refused_by_the_acl_is_publish_rejected(acl_broker: LocalMosquitto) -> None:
    async def go() -> None:
        url = f"mqtt://streams:pw@127.0.0.1:{acl_broker.port}"
        pub = MqttPublisher(url, client_id=client_id("pub"))
        await pub.start()
        try:
            with pytest.raises(PublishRejected, match="not authorized") as caught:
                await pub.publish_acked("forbidden/x", b"no")
            assert "'forbidden/x'" in str(caught.value)
            assert await pub.publish_acked("allowed/x", b"yes") == 0x10
            await pub.flush()  # the refusal went to its caller, not to flush()
        finally:
            await pub.stop()

    run(go())


@pytest.mark.integration
def test_right_credentials_are_accepted(password_broker: LocalMosquitto) -> None:
    async def go() -> None:
        sub = subscriber(f"mqtt://ingest:right@127.0.0.1:{password_broker.port}", "i-2", "t")
        await sub.start()
        assert sub.connected.is_set()
        await sub.stop()

    run(go())


@pytest.mark.integration
def test_an_unreachable_broker_is_one_readable_line(tmp_path: Path) -> None:
    port = free_port()

    async def go() -> None:
        sub = subscriber(f"mqtt://127.0.0.1:{port}", "ingest-1", "t")
        with pytest.raises(BrokerUnreachable) as caught:
            await sub.start()
        message = str(caught.value)
        assert message.startswith(f"cannot connect to MQTT broker 127.0.0.1:{port}: ")
        assert "\n" not in message
        assert isinstance(caught.value, MqttError)

    run(go())


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalMosquitto, Path]]:
    base = tmp_path_factory.mktemp("mosquitto-tls")
    cert, key = base / "cert.pem", base / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    config = f"certfile {cert}\nkeyfile {key}\n"
    with LocalMosquitto(base, persistence=False, extra_config=config) as mosquitto:
        yield mosquitto, cert


@pytest.mark.integration
def test_mqtts_talks_tls_with_the_given_context(
    tls_broker: tuple[LocalMosquitto, Path], topic: str
) -> None:
    broker, cert = tls_broker
    url = f"mqtts://127.0.0.1:{broker.port}"

    async def go() -> None:
        sub = subscriber(url, client_id("sub"), topic, ssl=ssl.create_default_context(cafile=cert))
        await sub.start()
        try:
            pub = MqttPublisher(
                url, client_id=client_id("pub"), ssl=ssl.create_default_context(cafile=cert)
            )
            await pub.start()
            await pub.publish(topic, b"sealed")
            await pub.flush()
            await pub.stop()
            await wait_until(lambda: received_by(sub).payloads == [b"sealed"], "the message")
        finally:
            await sub.stop()
        # The system's CAs do not know this self-signed certificate.
        with pytest.raises(BrokerUnreachable, match="CERTIFICATE_VERIFY_FAILED") as caught:
            await subscriber(url, client_id("sub"), topic).start()
        assert "\n" not in str(caught.value)

    run(go())
