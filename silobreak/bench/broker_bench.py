"""`silobreak bench ingest --broker rabbitmq`: ingest through a three-node RabbitMQ cluster
(devices on MQTT 3.1.1, ingestors on one quorum queue over AMQP 0-9-1) against one Mosquitto
(MQTT 5 shared subscription), alternately in the same run, on the same PostgreSQL.

Then each tier drains a backlog: the ingestor declares its queue (or session) and stops, the
messages are published, and the ingestor is started again and timed until all are stored. The
broker no longer sets the rate and batches are full, so the CPU per message compares the two
receive paths of the ingestor itself."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from silobreak.bench.ingest_bench import (
    Report,
    _consumers,
    _cpu_seconds,
    _publish,
    _register,
    _throughput,
    _truncate,
    _wait_stored,
)
from silobreak.bench.servers import bench_servers
from silobreak.local_rabbitmq import RabbitCluster

MOSQUITTO = "mosquitto-1"
RABBITMQ = "rabbitmq-3"


@dataclass(frozen=True, slots=True)
class Drain:
    system: str
    messages: int
    seconds: float
    cpu_us_per_message: float


@dataclass(slots=True)
class BrokerReport:
    throughput: Report
    drains: list[Drain]

    def markdown(self, *, ingestors: int) -> str:
        lines = [self.throughput.markdown(ingestors=ingestors), ""]
        lines += [
            "Draining a backlog (one ingestor, batches full):",
            "",
            (
                "| system | runs | messages/run | median msg/s | median ingest CPU µs/msg "
                "| runs (µs/msg) |"
            ),
            "|---|---|---|---|---|---|",
        ]
        for system in dict.fromkeys(d.system for d in self.drains):
            mine = [d for d in self.drains if d.system == system]
            rate = statistics.median(d.messages / d.seconds for d in mine)
            cpu = statistics.median(d.cpu_us_per_message for d in mine)
            each = ", ".join(f"{d.cpu_us_per_message:.1f}" for d in mine)
            lines.append(
                f"| {system} | {len(mine)} | {mine[0].messages:,} | {rate:,.0f} | {cpu:.1f} "
                f"| {each} |"
            )
        return "\n".join(lines)


def run_broker_bench(
    *,
    messages: int,
    devices: int,
    runs: int,
    ingestors: int,
    log: Callable[[str], None] = print,
) -> BrokerReport:
    """Throughput runs of both tiers, alternating, then backlog drains; the throughput ratio
    is RabbitMQ's over Mosquitto's, run by run."""
    report = Report()
    drains: list[Drain] = []
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
            for i in range(runs):
                group = f"drain{i}"
                tiers = [
                    (RABBITMQ, cluster.nodes[0].url, _amqp_env(cluster, group)),
                    (MOSQUITTO, mosquitto.url, _group_env(group)),
                ]
                for system, url, env in tiers:
                    drain = _drain(system, url, db_url, messages, devices, env, f"d{i}")
                    log(f"drain {i + 1}/{runs} {system}: {drain.cpu_us_per_message:.1f} µs/msg")
                    drains.append(drain)
                cluster.nodes[0].ctl("delete_queue", f"silobreak.ingest.{group}")
        finally:
            cluster.stop()
    return BrokerReport(report, drains)


def _drain(
    system: str,
    url: str,
    db_url: str,
    messages: int,
    devices: int,
    env: Callable[[int], dict[str, str]],
    tag: str,
) -> Drain:
    _truncate(db_url)
    with _consumers(system, url, db_url, 1, tag, env):
        pass  # declares the queue, or subscribes the session that keeps the backlog
    _publish(url, ["--devices", str(devices), "--messages", str(messages)])
    with _consumers(system, url, db_url, 1, tag, env) as procs:
        cpu, started = _cpu_seconds(procs[0].pid), time.monotonic()
        _wait_stored(db_url, system, messages)
        seconds = time.monotonic() - started
        cpu = _cpu_seconds(procs[0].pid) - cpu
    return Drain(system, messages, seconds, cpu / messages * 1e6)


def _group_env(group: str) -> Callable[[int], dict[str, str]]:
    """A share group of the run's own, and a session that outlives the ingestor's absence."""

    def env(_n: int) -> dict[str, str]:
        return {"SILOBREAK_INGEST_SHARE_GROUP": group, "SILOBREAK_INGEST_SESSION_EXPIRY": "10m"}

    return env


def _amqp_env(cluster: RabbitCluster, group: str) -> Callable[[int], dict[str, str]]:
    """Ingestor n's settings: the run's own queue, the nodes tried from node n on."""

    def env(n: int) -> dict[str, str]:
        nodes = cluster.nodes[n % len(cluster.nodes) :] + cluster.nodes[: n % len(cluster.nodes)]
        return {
            "SILOBREAK_INGEST_AMQP_URL": ",".join(node.amqp_url for node in nodes),
            "SILOBREAK_INGEST_SHARE_GROUP": group,
        }

    return env
