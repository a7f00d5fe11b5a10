"""`silobreak bench ingest --broker rabbitmq`: ingest through a three-node RabbitMQ cluster
(devices on MQTT 3.1.1, ingestors on one quorum queue over AMQP 0-9-1) against one Mosquitto
(MQTT 5 shared subscription), alternately in the same run, on the same PostgreSQL."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from silobreak.bench.ingest_bench import Report, _register, _throughput
from silobreak.bench.servers import bench_servers
from silobreak.local_rabbitmq import RabbitCluster

MOSQUITTO = "mosquitto-1"
RABBITMQ = "rabbitmq-3"


def run_broker_bench(
    *,
    messages: int,
    devices: int,
    runs: int,
    ingestors: int,
    log: Callable[[str], None] = print,
) -> Report:
    """Throughput runs of both tiers, alternating; the report's ratio is RabbitMQ's over
    Mosquitto's, run by run."""
    report = Report()
    with (
        bench_servers("bench-broker", commit_timestamps=True) as (mosquitto, db_url),
        tempfile.TemporaryDirectory(prefix="silobreak-bench-rabbitmq-") as root,
    ):
        cluster = RabbitCluster(Path(root))
        log("starting a three-node RabbitMQ cluster")
        cluster.start()
        try:
            _register(db_url, devices)
            for i in range(runs):
                run = _throughput(RABBITMQ, cluster.nodes[0].url, db_url, messages, devices,
                                  ingestors, i, _amqp_env(cluster, f"bench{i}"))  # fmt: skip
                cluster.nodes[0].ctl("delete_queue", f"silobreak.ingest.bench{i}")
                log(f"run {i + 1}/{runs} {RABBITMQ}: {run.rate:,.0f} msg/s")
                report.runs.append(run)
                run = _throughput(MOSQUITTO, mosquitto, db_url, messages, devices, ingestors, i)
                log(f"run {i + 1}/{runs} {MOSQUITTO}: {run.rate:,.0f} msg/s")
                report.runs.append(run)
        finally:
            cluster.stop()
    return report


def _amqp_env(cluster: RabbitCluster, group: str) -> Callable[[int], dict[str, str]]:
    """Ingestor n's settings: the run's own queue, the nodes tried from node n on."""

    def env(n: int) -> dict[str, str]:
        nodes = cluster.nodes[n % len(cluster.nodes) :] + cluster.nodes[: n % len(cluster.nodes)]
        return {
            "SILOBREAK_INGEST_AMQP_URL": ",".join(node.amqp_url for node in nodes),
            "SILOBREAK_INGEST_SHARE_GROUP": group,
        }

    return env
