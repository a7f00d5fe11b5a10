"""MQTT 3.1.1 (`?protocol=3.1.1`): the codec byte for byte, and the clients against Mosquitto."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtt import MqttPublisher, MqttSubscriber, SubscriptionDowngraded, SubscriptionRefused
from mqtt.codec import (
    ConnAck,
    PacketReader,
    PubAck,
    Publish,
    SubAck,
    Will,
    encode_connect,
    encode_disconnect,
    encode_publish,
    encode_subscribe,
)
from mqtt.errors import ConnectionRefused
from silobreak.local import LocalMosquitto
from tests.mqtt.test_client import (
    DEADLINE_S,
    client_id,
    received_by,
    run,
    subscriber,
    wait_until,
)
from tests.support.proxy import Proxy

V311 = "?protocol=3.1.1"

# -- codec ------------------------------------------------------------------------------------


def test_a_3_1_1_connect_is_protocol_level_4_without_properties() -> None:
    will = Will("devices/d1/status", b"off", qos=1, retain=True)
    packet = encode_connect(
        "d1",
        username="u",
        password="p",
        keepalive=30,
        clean_start=False,
        session_expiry=3600,  # 3.1.1 has no field for it, nor for the receive maximum
        receive_maximum=5000,
        will=will,
        v5=False,
    )
    body = (
        b"\x00\x04MQTT\x04"
        + bytes([0x80 | 0x40 | 0x20 | 0x08 | 0x04])  # user, password, will retain/QoS 1/flag
        + b"\x00\x1e"  # keepalive 30, and no properties after it
        + b"\x00\x02d1"
        + b"\x00\x11devices/d1/status\x00\x03off"  # will topic and payload, no properties
        + b"\x00\x01u\x00\x01p"
    )
    assert packet == bytes([0x10, len(body)]) + body
    # Clean Session set, keepalive 60 s, client id: nothing else.
    assert encode_connect("c", v5=False) == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"


def test_a_3_1_1_connect_refuses_a_password_without_a_user_name() -> None:
    with pytest.raises(ValueError, match="only with a user name"):
        encode_connect("c", password="p", v5=False)


def test_3_1_1_subscribe_publish_and_disconnect_carry_no_properties_or_reason_codes() -> None:
    # SUBSCRIBE: packet id, then each filter with only its QoS (no retain handling bits).
    assert encode_subscribe(1, ["a/#", "$share/g/b"], v5=False) == (
        b"\x82\x15\x00\x01" + b"\x00\x03a/#\x01" + b"\x00\x0a$share/g/b\x01"
    )
    assert encode_publish("a/b", b"xy", qos=1, packet_id=7, v5=False) == (
        b"\x32\x09\x00\x03a/b\x00\x07xy"
    )
    assert encode_publish("a/b", b"", qos=0, retain=True, v5=False) == b"\x31\x05\x00\x03a/b"
    assert encode_disconnect(v5=False) == b"\xe0\x00"
    with pytest.raises(ValueError, match="no reason code"):
        encode_disconnect(0x04, v5=False)


_PUBLISHES = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
        st.binary(max_size=300),
        st.integers(0, 1),
        st.integers(1, 65535),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


@given(_PUBLISHES, st.data())
def test_3_1_1_publishes_round_trip_through_the_reader_at_any_split(
    messages: list[tuple[str, bytes, int, int, bool]], data: st.DataObject
) -> None:
    stream = b"".join(
        encode_publish(t, p, qos=q, packet_id=i if q else 0, dup=d, v5=False)
        for t, p, q, i, d in messages
    )
    expected = [Publish(i if q else 0, t, p, q, d) for t, p, q, i, d in messages]
    cut = data.draw(st.integers(0, len(stream)))
    reader = PacketReader(v5=False)
    assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == expected


def test_a_3_1_1_publish_read_as_mqtt_5_loses_payload_bytes() -> None:
    # Why the reader must know the version: MQTT 5 reads the first payload byte as the
    # properties' length.
    packet = encode_publish("t", b"\x00abc", qos=1, packet_id=1, v5=False)
    assert PacketReader(v5=False).feed(packet) == [Publish(1, "t", b"\x00abc", 1, False)]
    assert PacketReader().feed(packet) == [Publish(1, "t", b"abc", 1, False)]


def test_3_1_1_connack_suback_and_puback_are_read_without_properties() -> None:
    stream = (
        b"\x20\x02\x01\x00"  # CONNACK: session present, accepted
        b"\x90\x05\x00\x01\x01\x80\x00"  # SUBACK id 1: QoS 1, failure, QoS 0
        b"\x40\x02\x00\x07"  # PUBACK id 7: no reason code in 3.1.1
    )
    assert PacketReader(v5=False).feed(stream) == [
        ConnAck(True, 0),
        SubAck(1, (0x01, 0x80, 0x00)),
        PubAck(7, 0),
    ]


def test_a_3_1_1_suback_failure_says_the_broker_gave_no_reason() -> None:
    error = SubscriptionRefused("$share/ingest/devices/+/telemetry", 0x80, v5=False)
    assert str(error) == (
        "MQTT broker refused the subscription to '$share/ingest/devices/+/telemetry': "
        "failure (SUBACK return code 0x80; MQTT 3.1.1 gives no reason); "
        "the broker may not take shared subscriptions over MQTT 3.1.1"
    )


# -- against Mosquitto -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    base = tmp_path_factory.mktemp("mosquitto-311")
    passwords = base / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "ingest", "right"], check=True)
    config = f"password_file {passwords}\nallow_anonymous true\n"
    with LocalMosquitto(base, persistence=False, extra_config=config) as mosquitto:
        yield mosquitto


@pytest.fixture(scope="module")
def dynsec_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMosquitto]:
    """A broker whose one user, `ingest`, may subscribe only to `allowed/#`.

    Mosquitto's acl_file never refuses a subscription (it filters what is delivered); its
    dynamic security plugin does, with SUBACK 0x80 to a 3.1.1 client.
    """
    plugin = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
    if not plugin.is_file() or shutil.which("mosquitto_ctrl") is None:
        pytest.skip("Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) is absent")
    base = tmp_path_factory.mktemp("mosquitto-dynsec")
    state = base / "dynamic-security.json"
    init = ["mosquitto_ctrl", "dynsec", "init", str(state), "ingest", "right"]
    subprocess.run(init, check=True, capture_output=True)
    security = json.loads(state.read_text())
    allowed = [{"acltype": "subscribePattern", "topic": "allowed/#", "allow": True}]
    for role in security["roles"]:
        role["acls"] = allowed
    state.write_text(json.dumps(security))
    config = f"plugin {plugin}\nplugin_opt_config_file {state}\n"
    with LocalMosquitto(base, persistence=False, extra_config=config) as mosquitto:
        yield mosquitto


@pytest.fixture
def topic() -> str:
    return f"test311/{client_id('t')}"


def url_of(broker: LocalMosquitto | Proxy, credentials: str = "") -> str:
    return broker.url.replace("mqtt://", f"mqtt://{credentials}") + V311


def connect_flags(broker: LocalMosquitto, name: str) -> list[str]:
    """How Mosquitto logged each connect of client `name`: `p2, c0, k30` is 3.1.1 (Mosquitto's
    own numbering: p1 3.1, p2 3.1.1, p5 5.0), Clean Session 0, keepalive 30."""
    wanted = re.compile(rf" as {re.escape(name)} \(([^)]*)\)")
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = wanted.findall(broker.log_file.read_text())
        if found or time.monotonic() > deadline:
            return [", ".join(f.split(", ")[:3]) for f in found]
        time.sleep(0.01)


async def publish_311(url: str, messages: list[tuple[str, bytes]]) -> MqttPublisher:
    pub = MqttPublisher(url, client_id=client_id("pub"))
    await pub.start()
    await pub.publish_many(messages)
    await pub.flush()
    await pub.stop()
    return pub


@pytest.mark.integration
def test_a_3_1_1_subscriber_gets_qos1_messages_a_3_1_1_publisher_had_acked(
    broker: LocalMosquitto, topic: str
) -> None:
    name, pub_name = client_id("sub"), client_id("pub")

    async def go() -> None:
        sub = subscriber(url_of(broker), name, f"{topic}/#")
        await sub.start()
        try:
            pub = MqttPublisher(url_of(broker), client_id=pub_name)
            await pub.start()
            # No reason code in a 3.1.1 PUBACK: it means accepted, and reads as success.
            assert await pub.publish_acked(f"{topic}/a", b"first") == 0
            await pub.publish_many([(f"{topic}/b", b"%d" % n) for n in range(200)])
            await pub.flush()
            await pub.stop()
            assert (pub.published, pub.acks_received, pub.unrouted) == (201, 201, 0)
            got = received_by(sub)
            await wait_until(lambda: len(got.messages) == 201, "201 messages")
            assert got.payloads == [b"first"] + [b"%d" % n for n in range(200)]
            assert all(0 < i <= 65535 for i, _, _ in got.messages)
            assert sub.ack([i for i, _, _ in got.messages], sub.generation)
        finally:
            await sub.stop()

    run(go())
    assert connect_flags(broker, name) == ["p2, c0, k30"]  # a kept session: Clean Session 0
    assert connect_flags(broker, pub_name) == ["p2, c1, k60"]


@pytest.mark.integration
def test_unacked_qos1_messages_come_again_after_a_cut_on_3_1_1(
    broker: LocalMosquitto, topic: str
) -> None:
    name = client_id("sub")

    async def go() -> None:
        async with Proxy(broker.port) as proxy:
            sub = subscriber(url_of(proxy), name, topic)
            got = received_by(sub)
            await sub.start()
            try:
                await publish_311(url_of(broker), [(topic, b"%d" % n) for n in range(10)])
                await wait_until(lambda: len(got.messages) == 10, "10 messages")
                await publish_311(url_of(broker), [(topic, b"mark")])
                await wait_until(lambda: len(got.messages) == 11, "11 messages")
                first_ids = {p: i for i, _, p in got.messages}
                assert sub.ack([i for i, _, _ in got.messages[:4]], sub.generation)
                proxy.cut()
                await wait_until(lambda: got.payloads.count(b"mark") == 2, "the mark again")
                await wait_until(lambda: sub.reconnects == 1, "the resubscribe")
                assert sub.generation == 2
            finally:
                await sub.stop()
        acked = {b"%d" % n for n in range(4)}
        again = got.messages[11:]
        # At least once: an ack the cut overtook lets its message come again too.
        assert [p for _, _, p in again if p not in acked] == [
            *(b"%d" % n for n in range(4, 10)),
            b"mark",
        ]
        assert all(first_ids[p] == i for i, _, p in again)  # the same packet ids
        assert sub.duplicates_received == len(again) >= 7

    run(go())
    assert connect_flags(broker, name) == ["p2, c0, k30", "p2, c0, k30"]


@pytest.mark.integration
def test_a_3_1_1_session_resumes_with_its_backlog_after_the_subscriber_is_gone(
    broker: LocalMosquitto, topic: str
) -> None:
    name = client_id("sub")

    async def go() -> None:
        first = subscriber(url_of(broker), name, topic)
        await first.start()
        await publish_311(url_of(broker), [(topic, b"a"), (topic, b"b")])
        await wait_until(lambda: len(received_by(first).messages) == 2, "a and b")
        assert first.ack([received_by(first).messages[0][0]], first.generation)
        await first.stop()
        await publish_311(url_of(broker), [(topic, b"c")])  # queued for the absent session
        second = subscriber(url_of(broker), name, topic)
        await second.start()
        try:
            await wait_until(lambda: len(received_by(second).messages) == 2, "b and c")
            assert received_by(second).payloads == [b"b", b"c"]
            assert second.duplicates_received == 1  # b was in flight, unacked
        finally:
            await second.stop()

    run(go())


@pytest.mark.integration
def test_a_3_1_1_subscriber_with_no_session_expiry_is_forgotten_when_it_goes(
    broker: LocalMosquitto, topic: str
) -> None:
    name = client_id("sub")

    async def go() -> None:
        first = subscriber(url_of(broker), name, topic, session_expiry=0)
        await first.start()
        await first.stop()
        await publish_311(url_of(broker), [(topic, b"lost")])  # no session holds it
        second = subscriber(url_of(broker), name, topic, session_expiry=0)
        await second.start()
        try:
            await publish_311(url_of(broker), [(topic, b"live")])
            await wait_until(lambda: len(received_by(second).messages) >= 1, "live")
            assert received_by(second).payloads == [b"live"]
        finally:
            await second.stop()

    run(go())
    assert connect_flags(broker, name) == ["p2, c1, k30", "p2, c1, k30"]


@pytest.mark.integration
def test_a_3_1_1_suback_failure_is_subscription_refused(dynsec_broker: LocalMosquitto) -> None:
    async def go() -> None:
        sub = MqttSubscriber(
            url_of(dynsec_broker, "ingest:right@"),
            client_id=client_id("sub"),
            topic_filters=["allowed/x", "denied/x"],
            on_publish=lambda *_: None,
        )
        with pytest.raises(SubscriptionRefused) as caught:
            await sub.start()
        assert (caught.value.topic_filter, caught.value.reason_code) == ("denied/x", 0x80)
        assert "MQTT 3.1.1 gives no reason" in str(caught.value)

    run(go())


@pytest.mark.integration
def test_a_3_1_1_refused_connect_names_the_return_code(broker: LocalMosquitto) -> None:
    async def go() -> None:
        pub = MqttPublisher(url_of(broker, "ingest:wrong@"), client_id="pub-refused")
        with pytest.raises(ConnectionRefused) as caught:
            await pub.start()
        # Mosquitto 2.0 answers a wrong password with 5, not authorized (3.1.1 §3.2.2.3).
        assert caught.value.reason_code == 5
        assert str(caught.value) == (
            f"MQTT broker 127.0.0.1:{broker.port} refused client 'pub-refused': "
            "not authorized (reason code 0x05); check the user name and password"
        )

    run(go())


@pytest.mark.integration
def test_a_3_1_1_will_is_published_when_the_publisher_stops_asking_for_it(
    broker: LocalMosquitto, topic: str
) -> None:
    async def go() -> None:
        sub = subscriber(url_of(broker), client_id("sub"), topic)
        await sub.start()
        try:
            will = Will(topic, b"offline", qos=1)
            pub = MqttPublisher(url_of(broker), client_id=client_id("dev"), will=will)
            await pub.start()
            await pub.publish_acked(topic, b"online")
            await pub.stop(send_will=True)  # 3.1.1: closed without DISCONNECT
            await wait_until(lambda: len(received_by(sub).messages) == 2, "the will")
            assert received_by(sub).payloads == [b"online", b"offline"]
        finally:
            await sub.stop()

    run(go())


@pytest.mark.integration
def test_mosquitto_shares_a_3_1_1_shared_subscription(broker: LocalMosquitto, topic: str) -> None:
    group = client_id("g")

    async def go() -> None:
        subs = [subscriber(url_of(broker), client_id(n), f"$share/{group}/{topic}") for n in "ab"]
        for sub in subs:
            await sub.start()
        try:
            await publish_311(url_of(broker), [(topic, b"%d" % n) for n in range(100)])

            def total() -> int:
                return sum(len(received_by(s).messages) for s in subs)

            await wait_until(lambda: total() >= 100, "100 messages")
            got = [received_by(s).payloads for s in subs]
            assert sorted(got[0] + got[1]) == sorted(b"%d" % n for n in range(100))
            assert all(got), "each member takes a part"
        finally:
            for sub in subs:
                await sub.stop()

    run(go())


def test_the_protocol_comes_from_the_url_and_mqtt_5_stays_the_default() -> None:
    assert MqttPublisher("mqtt://h", client_id="c").v5
    assert not MqttPublisher("mqtt://h?protocol=3.1.1", client_id="c").v5
    sub = MqttSubscriber("mqtts://h?protocol=3.1.1", client_id="c", topic_filters=["t"],
                         on_publish=lambda *_: None)  # fmt: skip
    assert (sub.url.protocol, sub.url.tls) == ("3.1.1", True)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_subscription_granted_qos_0_is_refused_not_taken(tmp_path: Path, protocol: str) -> None:
    """A broker capped at QoS 0 would drop what arrives while we are away: at-least-once
    delivery would end without a word, so the client says so and does not subscribe."""
    with LocalMosquitto(tmp_path, persistence=False, extra_config="max_qos 0\n") as capped:

        async def go() -> None:
            sub = MqttSubscriber(
                f"{capped.url}?protocol={protocol}",
                client_id=client_id("sub"),
                topic_filters=["qos/x"],
                on_publish=lambda *_: None,
            )
            with pytest.raises(SubscriptionDowngraded) as caught:
                await sub.start()
            assert (caught.value.topic_filter, caught.value.granted) == ("qos/x", 0)
            assert "max_qos" in str(caught.value)

        run(go())
