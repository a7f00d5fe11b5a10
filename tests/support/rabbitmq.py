"""RabbitMQ for the tests: a node or a three-node cluster of their own (from
silobreak/local_rabbitmq.py), skipped where RabbitMQ is not installed, and what they ask a node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from silobreak.local_rabbitmq import LocalRabbitMQ, RabbitCluster, missing

__all__ = ["LocalRabbitMQ", "RabbitCluster", "missing", "queue_leader", "running_cluster"]


def running_cluster(base_dir: Path) -> Iterator[RabbitCluster]:
    """A started cluster for a module's fixture (skips where RabbitMQ is not installed)."""
    why = missing()
    if why is not None:
        pytest.skip(why)
    cluster = RabbitCluster(base_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def queue_leader(node: LocalRabbitMQ, queue: str) -> str:
    """The node name of a quorum queue's leader, as `node` sees it ("" if it has none now)."""
    rows = json.loads(node.ctl("list_queues", "name", "leader", "--formatter", "json"))
    return next((str(r.get("leader", "")) for r in rows if r["name"] == queue), "")
