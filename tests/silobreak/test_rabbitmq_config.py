"""`silobreak broker-config --engine rabbitmq`: a node of the clustered broker tier.

The three-node cluster of tests/support/rabbitmq.py runs what `render_rabbitmq` writes, so the
cluster tests (tests/e2e/test_ingest_rabbitmq_cluster.py, tests/faults/test_rabbitmq_cluster.py)
are what shows RabbitMQ accepts it.
"""

from __future__ import annotations

from pathlib import Path

from silobreak.rabbitmq_config import ENABLED_PLUGINS
from tests.silobreak.test_cli_identity import cli, ok, one_clear_line

NODES = ("rabbit@rmq1", "rabbit@rmq2", "rabbit@rmq3")


def node_args() -> list[str]:
    return [arg for node in NODES for arg in ("--cluster-node", node)]


def test_rabbitmq_node_config_names_every_node_and_keeps_mqtt_sessions_in_quorum_queues(
    tmp_path: Path,
) -> None:
    target = tmp_path / "rmq"
    out = ok(cli(tmp_path, "broker-config", "--engine", "rabbitmq", "--profile", "deploy",
                 "--dir", str(target), *node_args()))  # fmt: skip
    assert "SILOBREAK_INGEST_AMQP_URL" in out
    conf = (target / "rabbitmq.conf").read_text().splitlines()
    assert "mqtt.durable_queue_type = quorum" in conf
    assert "mqtt.allow_anonymous = false" in conf
    assert "listeners.tcp.default = 0.0.0.0:5672" in conf
    assert "mqtt.listeners.tcp.default = 0.0.0.0:1883" in conf
    assert "cluster_partition_handling = pause_minority" in conf
    assert "disk_free_limit.absolute = 2GB" in conf
    for n, node in enumerate(NODES, 1):
        assert f"cluster_formation.classic_config.nodes.{n} = {node}" in conf
    assert (target / "enabled_plugins").read_text() == ENABLED_PLUGINS


def test_rabbitmq_dev_config_listens_on_loopback_and_prints_to_stdout(tmp_path: Path) -> None:
    out = ok(cli(tmp_path, "broker-config", "--engine", "rabbitmq", "--dir", str(tmp_path / "r"),
                 "--output", "-", "--plain-port", "1884", "--amqp-port", "5673"))  # fmt: skip
    assert "mqtt.listeners.tcp.default = 127.0.0.1:1884" in out
    assert "listeners.tcp.default = 127.0.0.1:5673" in out
    assert "cluster_formation" not in out  # a single node
    assert not (tmp_path / "r").exists()


def test_rabbitmq_cluster_node_without_a_host_is_one_clear_line(tmp_path: Path) -> None:
    result = cli(tmp_path, "broker-config", "--engine", "rabbitmq", "--dir", str(tmp_path / "r"),
                 "--cluster-node", "rmq1")  # fmt: skip
    assert "give it as rabbit@HOST" in one_clear_line(result)
