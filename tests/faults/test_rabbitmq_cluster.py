"""A three-node RabbitMQ cluster loses nothing when a node or an ingestor dies.

Devices publish MQTT 3.1.1 QoS 1; RabbitMQ confirms a publish (PUBACK) once the quorum queue's
majority has it. Ingestors consume the ingest group's quorum queue over AMQP 0-9-1 and
acknowledge a batch after its commit. So: killing the queue leader's node moves leadership to
a survivor with every confirmed message, and killing an ingestor hands its unacknowledged
deliveries to the other consumer; the idempotent insert stores a redelivery once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

from ingest.amqp_source import queue_name
from tests.e2e.harness import (
    IngestProcess,
    Publishing,
    fleet,
    message_count,
    messages,
    register,
    wait_for_messages,
    wait_until,
)
from tests.faults.checks import assert_stored_exactly_once
from tests.support.rabbitmq import LocalRabbitMQ, RabbitCluster, queue_leader, running_cluster

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

StartIngestor = Callable[..., IngestProcess]
# A quorum queue elects a new leader within seconds here; a node boots in ~20-40 s loaded.
RECOVERY_S = 180.0


@pytest.fixture(scope="module")
def cluster(services_root: Path) -> Iterator[RabbitCluster]:
    yield from running_cluster(services_root / "rabbitmq-cluster-faults")


@pytest.fixture
def group(cluster: RabbitCluster, device_prefix: str) -> Iterator[str]:
    """This test's ingest group; its queue is deleted after the test (it would fill up)."""
    name = f"{device_prefix}group"
    yield name
    node = next(n for n in cluster.nodes if n.running)
    with pika.BlockingConnection(pika.URLParameters(node.amqp_url)) as conn:
        conn.channel().queue_delete(queue_name(name))


def declare(node: LocalRabbitMQ, group: str) -> None:
    """Declare the group's queue as ingest does, so that its leader is known beforehand."""
    with pika.BlockingConnection(pika.URLParameters(node.amqp_url)) as conn:
        conn.channel().queue_declare(
            queue_name(group),
            durable=True,
            arguments={"x-queue-type": "quorum", "x-overflow": "reject-publish"},
        )


def amqp_urls(nodes: list[LocalRabbitMQ]) -> str:
    return ",".join(n.amqp_url for n in nodes)


def queue_counts(node: LocalRabbitMQ, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of `queue`, as `node` sees them."""
    rows = json.loads(
        node.ctl(
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        )
    )
    mine = next(r for r in rows if r["name"] == queue)
    return int(mine["messages_ready"]), int(mine["messages_unacknowledged"])


def test_killing_the_queue_leaders_node_mid_publish_loses_and_doubles_nothing(
    cluster: RabbitCluster,
    db_url: str,
    device_prefix: str,
    group: str,
    start_ingestor: StartIngestor,
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=500)  # 20,000 messages
    declare(cluster.nodes[0], group)
    leader = cluster.node_named(queue_leader(cluster.nodes[0], queue_name(group)))
    survivors = [n for n in cluster.nodes if n is not leader]
    start_ingestor(
        survivors[0].url,
        db_url,
        ingest_amqp_url=amqp_urls(survivors),
        ingest_share_group=group,
    )
    # Devices on the surviving nodes, half each; the leader's node dies under them.
    halves = [items[0::2], items[1::2]]
    publishers = [
        Publishing(node.url, [(t, p) for t, p, *_ in half], f"{device_prefix}pub{n}", rate=2000)
        for n, (node, half) in enumerate(zip(survivors, halves, strict=True))
    ]
    wait_until(lambda: message_count(db_url, device_prefix) >= 2000, 60, "a first 2,000")
    assert any(p.acked < len(items) // 2 for p in publishers)  # still in flight
    leader.kill()
    for p in publishers:
        p.join(RECOVERY_S)
    wait_for_messages(db_url, device_prefix, len(items), timeout=RECOVERY_S)
    assert_stored_exactly_once(db_url, device_prefix, items)
    new_leader = queue_leader(survivors[0], queue_name(group))
    assert new_leader in {n.node for n in survivors}
    # The node comes back and rejoins, for the next test.
    leader.start()
    survivors[0].wait_for(lambda: len(cluster.running_nodes()) == cluster.SIZE, "see 3 nodes")


def test_a_killed_ingestors_unacknowledged_messages_go_to_the_other_ingestor(
    cluster: RabbitCluster,
    db_url: str,
    device_prefix: str,
    group: str,
    start_ingestor: StartIngestor,
) -> None:
    records = fleet(device_prefix, per_type=5)
    register(db_url, records)
    items = messages(records, per_device=100)  # 2,000 messages
    held = 300
    queue = queue_name(group)
    urls = amqp_urls(cluster.nodes)
    # The first holds what it is sent and never commits: a batch that neither fills nor ages.
    stuck = start_ingestor(
        cluster.nodes[0].url,
        db_url,
        "stuck",
        ingest_amqp_url=urls,
        ingest_share_group=group,
        ingest_receive_maximum=str(held),
        ingest_batch_size="100000",
        ingest_batch_interval="1h",
    )
    node = cluster.nodes[0]
    Publishing(node.url, [(t, p) for t, p, *_ in items[:held]], f"{device_prefix}pub", rate=2000)
    wait_until(lambda: queue_counts(node, queue) == (0, held), 60, f"{held} held, unacked")
    other = start_ingestor(
        cluster.nodes[1].url, db_url, "other", ingest_amqp_url=urls, ingest_share_group=group
    )
    rest = Publishing(
        node.url, [(t, p) for t, p, *_ in items[held:]], f"{device_prefix}pub2", rate=2000
    )
    rest.join(RECOVERY_S)
    wait_for_messages(db_url, device_prefix, len(items) - held, timeout=RECOVERY_S)
    assert queue_counts(node, queue) == (0, held)  # still with the stuck one
    stuck.kill()
    wait_for_messages(db_url, device_prefix, len(items), timeout=RECOVERY_S)
    assert_stored_exactly_once(db_url, device_prefix, items)
    assert other.metric("silobreak_ingest_received_total") == len(items)


def test_a_rolling_restart_of_every_node_under_load_loses_nothing(
    cluster: RabbitCluster,
    db_url: str,
    device_prefix: str,
    group: str,
    start_ingestor: StartIngestor,
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=300)  # 12,000 messages, a third to each node
    ingestor = start_ingestor(
        cluster.nodes[0].url,
        db_url,
        ingest_amqp_url=amqp_urls(cluster.nodes),
        ingest_share_group=group,
    )
    # Slow enough that publishing lasts through the three restarts (~20-40 s each here).
    publishers = [
        Publishing(
            node.url,
            [(t, p) for t, p, *_ in items[n :: cluster.SIZE]],
            f"{device_prefix}pub{n}",
            rate=60,
        )
        for n, node in enumerate(cluster.nodes)
    ]
    for node in cluster.nodes:
        node.stop()  # `rabbitmqctl stop`: a clean shutdown, as an upgrade does
        node.start()
        node.wait_for(lambda: len(cluster.running_nodes()) == cluster.SIZE, "see 3 nodes")
    assert any(p.is_alive() for p in publishers)  # the load outlasted the restarts
    for p in publishers:
        p.join(RECOVERY_S)
    wait_for_messages(db_url, device_prefix, len(items), timeout=RECOVERY_S)
    assert_stored_exactly_once(db_url, device_prefix, items)
    assert sum(p.reconnects for p in publishers) >= cluster.SIZE  # each node's went away
    ingestor.wait_for_log("connection to 127.0.0.1")  # its node restarted under it
