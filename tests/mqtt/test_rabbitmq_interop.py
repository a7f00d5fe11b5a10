"""The client over MQTT 3.1.1 against RabbitMQ 3.10's MQTT plugin, a node of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mqtt import MqttConnectionLost, MqttPublisher
from tests.mqtt.test_client import client_id, received_by, run, subscriber, wait_until
from tests.support import rabbitmq
from tests.support.rabbitmq import LocalRabbitMQ

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    why = rabbitmq.missing()
    if why is not None:
        pytest.skip(why)
    node = LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def topic() -> str:
    return f"interop/{client_id('t')}"


async def publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    pub = MqttPublisher(url, client_id=client_id("pub"))
    await pub.start()
    await pub.publish_many(messages)
    await pub.flush()
    await pub.stop()


def test_rabbitmq_delivers_qos1_messages_in_order_and_acks_publishes(
    rabbit: LocalRabbitMQ, topic: str
) -> None:
    async def go() -> None:
        sub = subscriber(rabbit.url, client_id("sub"), f"{topic}/+")
        await sub.start()
        try:
            pub = MqttPublisher(rabbit.url, client_id=client_id("pub"))
            await pub.start()
            assert await pub.publish_acked(f"{topic}/a", b"first") == 0
            await pub.publish_many([(f"{topic}/b", b"%d" % n) for n in range(300)])
            await pub.flush()
            await pub.stop()
            got = received_by(sub)
            await wait_until(lambda: len(got.messages) >= 301, "301 messages")
            assert got.payloads == [b"first"] + [b"%d" % n for n in range(300)]
            assert sub.ack([i for i, _, _ in got.messages], sub.generation)
        finally:
            await sub.stop()

    run(go())


def test_rabbitmq_keeps_a_3_1_1_session_and_sends_unacked_messages_again(
    rabbit: LocalRabbitMQ, topic: str
) -> None:
    name = client_id("sub")

    async def go() -> None:
        first = subscriber(rabbit.url, name, topic)
        await first.start()
        await publish(rabbit.url, [(topic, b"%d" % n) for n in range(5)])
        await wait_until(lambda: len(received_by(first).messages) == 5, "5 messages")
        assert first.ack([m[0] for m in received_by(first).messages[:2]], first.generation)
        await first.stop()
        await publish(rabbit.url, [(topic, b"while away")])
        second = subscriber(rabbit.url, name, topic)
        await second.start()
        try:
            await wait_until(lambda: len(received_by(second).messages) == 4, "4 messages")
            assert sorted(received_by(second).payloads) == sorted([b"2", b"3", b"4", b"while away"])
        finally:
            await second.stop()

    run(go())


def test_an_mqtt_5_connect_to_rabbitmq_3_10_says_to_ask_for_3_1_1(rabbit: LocalRabbitMQ) -> None:
    async def go() -> None:
        url = rabbit.url.removesuffix("?protocol=3.1.1")
        pub = MqttPublisher(url, client_id=client_id("pub"))
        with pytest.raises(MqttConnectionLost, match=r"add \?protocol=3\.1\.1"):
            await pub.start()

    run(go())


def test_rabbitmq_3_10_grants_a_share_filter_but_delivers_it_nothing(
    rabbit: LocalRabbitMQ, topic: str
) -> None:
    # Why ingest on RabbitMQ 3.10 needs an empty share group: `$share/...` is no shared
    # subscription there, just a topic filter that no device publishes to.
    async def go() -> None:
        shared = subscriber(rabbit.url, client_id("shared"), f"$share/g/{topic}")
        plain = subscriber(rabbit.url, client_id("plain"), topic)
        await shared.start()
        await plain.start()
        try:
            await publish(rabbit.url, [(topic, b"one"), (topic, b"two")])
            await wait_until(lambda: len(received_by(plain).messages) == 2, "the plain filter")
            await publish(rabbit.url, [(f"$share/g/{topic}", b"marker")])
            await wait_until(lambda: len(received_by(shared).messages) == 1, "the marker")
            assert received_by(shared).payloads == [b"marker"]  # one and two never came
        finally:
            await shared.stop()
            await plain.stop()

    run(go())
