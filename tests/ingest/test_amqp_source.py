"""The AMQP source's pure parts: binding keys, topics back from routing keys, its bounds.

Consuming from real RabbitMQ nodes: tests/e2e/test_ingest_rabbitmq_cluster.py and
tests/faults/test_rabbitmq_cluster.py.
"""

from __future__ import annotations

import pytest

from devices.topics import TELEMETRY_FILTER
from ingest.amqp_source import AmqpSource, AmqpUnavailable, queue_name, routing_key
from ingest.status import STATUS_FILTER


def source(urls: list[str]) -> AmqpSource:
    return AmqpSource(
        urls,
        queue=queue_name("ingest"),
        topic_filters=[TELEMETRY_FILTER, STATUS_FILTER],
        prefetch=100,
        on_publish=lambda _tag, _topic, _payload: None,
        name="test",
    )


def test_device_filters_bind_as_amqp_topic_keys() -> None:
    assert routing_key(TELEMETRY_FILTER) == "devices.*.telemetry"
    assert routing_key(STATUS_FILTER) == "devices.*.status"


def test_a_device_id_with_dots_is_one_routing_key_word_and_comes_back_as_it_was() -> None:
    # RabbitMQ's MQTT plugin swaps `/` and `.`: `a.b` is one word, so `*` matches it.
    key = routing_key("devices/lamp.7/telemetry")
    assert key == "devices.lamp/7.telemetry"
    assert routing_key(key) == "devices/lamp.7/telemetry"


def test_each_ingest_group_has_a_queue_of_its_own() -> None:
    assert queue_name("ingest") == "silobreak.ingest.ingest"
    assert queue_name("") == "silobreak.ingest.ingest"
    assert queue_name("north") != queue_name("south")


def test_a_source_without_a_url_or_with_a_bad_one_is_refused() -> None:
    with pytest.raises(AmqpUnavailable, match="no broker URL"):
        source([])
    with pytest.raises(AmqpUnavailable, match="AMQP URL"):
        source(["amqp://guest:guest@127.0.0.1:5672/?heartbeat=often"])


def test_acks_before_any_connection_are_dropped_not_sent() -> None:
    amqp = source(["amqp://guest:guest@127.0.0.1:5672/"])
    assert amqp.ack([1, 2, 3], amqp.generation) is False
    assert amqp.acks_dropped == 3
