"""Ingest from a three-node RabbitMQ cluster: devices publish MQTT 3.1.1 QoS 1 to any node,
ingestors consume one durable quorum queue over AMQP 0-9-1 as competing consumers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pika
import pytest

from ingest.amqp_source import queue_name
from tests.e2e.harness import (
    IngestProcess,
    fleet,
    messages,
    publish,
    query,
    register,
    wait_for_messages,
)
from tests.e2e.test_ingest import expected_rows, stored_rows
from tests.support.rabbitmq import RabbitCluster, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartIngestor = Callable[..., IngestProcess]


@pytest.fixture(scope="module")
def cluster(services_root: Path) -> Iterator[RabbitCluster]:
    yield from running_cluster(services_root / "rabbitmq-cluster-e2e")


def amqp_urls(cluster: RabbitCluster, first: int) -> str:
    """Every node's AMQP URL, node `first` first (where the ingestor connects)."""
    nodes = cluster.nodes[first:] + cluster.nodes[:first]
    return ",".join(n.amqp_url for n in nodes)


def delete_queue(cluster: RabbitCluster, queue: str) -> None:
    with pika.BlockingConnection(pika.URLParameters(cluster.nodes[0].amqp_url)) as conn:
        conn.channel().queue_delete(queue)


def publish_to_every_node(
    cluster: RabbitCluster, items: list[tuple[str, bytes]], client_id: str
) -> None:
    """A third of the items to each node, at once, QoS 1, waiting for every PUBACK."""
    parts = [items[n :: len(cluster.nodes)] for n in range(len(cluster.nodes))]
    threads = [
        threading.Thread(target=publish, args=(node.url, part, f"{client_id}-{n}"))
        for n, (node, part) in enumerate(zip(cluster.nodes, parts, strict=True))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()


def test_devices_on_every_node_reach_two_ingestors_and_every_reading_is_stored_once(
    cluster: RabbitCluster, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    group = f"{device_prefix}group"
    queue = queue_name(group)
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=100)  # 4,000 messages
    ingestors = [
        start_ingestor(
            cluster.nodes[n].url,
            db_url,
            str(n),
            ingest_amqp_url=amqp_urls(cluster, n),
            ingest_share_group=group,
        )
        for n in (0, 1)
    ]
    try:
        for n, proc in enumerate(ingestors):
            proc.wait_for_log(f"over AMQP 0-9-1 at 127.0.0.1:{cluster.nodes[n].amqp_port}")
        publish_to_every_node(cluster, [(t, p) for t, p, *_ in items], f"{device_prefix}pub")
        wait_for_messages(db_url, device_prefix, len(items), timeout=120)
        assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(items)
        assert query(db_url, "SELECT count(*) FROM rejected_messages")[0][0] == 0
        # Competing consumers: both took a share, and between them every message once.
        received = [proc.metric("silobreak_ingest_received_total") for proc in ingestors]
        assert all(r > 0 for r in received), received
        assert sum(received) == len(items)
        rows = json.loads(
            cluster.nodes[2].ctl(
                "list_queues", "name", "type", "durable", "arguments", "--formatter", "json"
            )
        )
        mine = next(r for r in rows if r["name"] == queue)
        assert (mine["type"], mine["durable"]) == ("quorum", True)
        arguments = {a[0]: a[-1] for a in mine["arguments"]}  # [name, type, value]
        assert arguments.get("x-overflow") == "reject-publish", mine
    finally:
        for proc in ingestors:
            proc.stop()
        delete_queue(cluster, queue)


def test_an_ingestor_whose_queue_is_deleted_declares_it_again_and_goes_on(
    cluster: RabbitCluster, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    group = f"{device_prefix}group"
    queue = queue_name(group)
    records = fleet(device_prefix, per_type=5)
    register(db_url, records)
    first = messages(records, per_device=10)
    later = messages(records, per_device=10, end=datetime.now(UTC) + timedelta(minutes=2))
    proc = start_ingestor(
        cluster.nodes[0].url,
        db_url,
        ingest_amqp_url=amqp_urls(cluster, 0),
        ingest_share_group=group,
    )
    try:
        publish(cluster.nodes[1].url, [(t, p) for t, p, *_ in first], f"{device_prefix}pub")
        wait_for_messages(db_url, device_prefix, len(first), timeout=120)
        mark = len(proc.lines)
        cluster.nodes[0].ctl("delete_queue", queue)  # the node the ingestor consumes on
        proc.wait_for_log("cancelled our consumer", timeout=60, start=mark)
        proc.wait_for_log(f"consuming {queue}", timeout=120, start=mark)
        publish(cluster.nodes[2].url, [(t, p) for t, p, *_ in later], f"{device_prefix}pub2")
        wait_for_messages(db_url, device_prefix, len(first) + len(later), timeout=120)
        assert {r[:4] for r in stored_rows(db_url, device_prefix)} == expected_rows(first + later)
    finally:
        proc.stop()
        delete_queue(cluster, queue)
