"""`silobreak bench ingest --ha`: ingest into a synchronous Patroni pair against one PostgreSQL.

Both targets in the same run, on the same broker, alternating: a single PostgreSQL
(`LocalPostgres`), and three PostgreSQL members under Patroni in synchronous_mode_strict
(`silobreak.local_ha`: the primary commits once its synchronous standby has the WAL). Then
the primary is SIGKILLed while a paced stream flows, and the time until ingest commits on
the new primary is measured, with a count of what was stored (nothing lost, nothing twice).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Final

import psycopg

from silobreak.bench.ingest_bench import (
    PREFIX,
    Latency,
    Run,
    _consumers,
    _latency,
    _register,
    _throughput,
    _truncate,
    _wait_stored,
)
from silobreak.bench.machine import describe_machine
from silobreak.bench.servers import bench_servers
from silobreak.local import LocalMosquitto
from silobreak.local_ha import LocalEtcd, LocalPatroni, wait_for
from store.migrate import migrate

SINGLE: Final = "single PostgreSQL"
PAIR: Final = "Patroni, synchronous"
_STORED_BEFORE_KILL: Final = 5000
_TIMEOUT_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class Failover:
    messages: int
    stored: int  # rows on the new primary: `messages` when nothing is lost or doubled
    seconds: float  # SIGKILL of the primary to ingest's first commit on the new one


@dataclass(slots=True)
class HaReport:
    runs: list[Run] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    failover: Failover | None = None

    def median_rate(self, target: str) -> float:
        return statistics.median(r.rate for r in self.runs if r.system == target)

    def paired_ratios(self) -> list[float]:
        """The pair's rate over the single server's, run by run (they alternate)."""
        pair = [r for r in self.runs if r.system == PAIR]
        single = [r for r in self.runs if r.system == SINGLE]
        return [a.rate / b.rate for a, b in zip(pair, single, strict=False)]

    def markdown(self) -> str:
        lines = [
            (
                f"Machine: {describe_machine()}; broker, one ingestor, the single PostgreSQL, "
                "three etcd and three Patroni members on the same machine."
            ),
            "",
            "| target | runs | messages/run | median msg/s | runs (msg/s) |",
            "|---|---|---|---|---|",
        ]
        for target in (SINGLE, PAIR):
            runs = [r for r in self.runs if r.system == target]
            if runs:
                each = ", ".join(f"{r.rate:,.0f}" for r in runs)
                lines.append(
                    f"| {target} | {len(runs)} | {runs[0].messages:,} "
                    f"| {self.median_rate(target):,.0f} | {each} |"
                )
        ratios = self.paired_ratios()
        if ratios:
            paired = ", ".join(f"{x:.2f}x" for x in ratios)
            lines += [
                "",
                (
                    f"Pair / single, per paired run: {paired}; median "
                    f"{statistics.median(ratios):.2f}x."
                ),
            ]
        if self.latencies:
            lines += [
                "",
                "| target | fixed rate (msg/s) | messages | p50 publish→commit | p99 | max |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x.system} | {x.rate:,.0f} | {x.messages:,} | {x.p50_ms:.0f} ms "
                f"| {x.p99_ms:.0f} ms | {x.max_ms:.0f} ms |"
                for x in self.latencies
            ]
        if self.failover is not None:
            f = self.failover
            lines += [
                "",
                (
                    f"Primary SIGKILLed mid-stream: ingest committed on the new primary "
                    f"{f.seconds:.1f} s later; {f.stored:,} of {f.messages:,} messages stored "
                    f"({f.messages - f.stored:,} missing)."
                ),
            ]
        return "\n".join(lines)


def run_ha_bench(
    *,
    messages: int = 50_000,
    devices: int = 1000,
    runs: int = 3,
    rate: float = 2000.0,
    latency_seconds: float = 10.0,
    failover: bool = True,
    log: Callable[[str], None] = print,
) -> HaReport:
    report = HaReport()
    with (
        bench_servers("bench-ha", commit_timestamps=True) as (broker, single_url),
        _cluster(broker) as cluster,
    ):
        pair_url = cluster.url_for("bench")
        targets = {SINGLE: single_url, PAIR: pair_url}
        for url in targets.values():
            _register(url, devices)
        for i in range(runs):
            for target, url in targets.items():
                run = replace(
                    _throughput("silobreak", broker, url, messages, devices, 1, i), system=target
                )
                log(f"run {i + 1}/{runs} {target}: {run.rate:,.0f} msg/s")
                report.runs.append(run)
        if latency_seconds > 0:
            count = int(rate * latency_seconds)
            for target, url in targets.items():
                lat = replace(
                    _latency("silobreak", broker, url, count, devices, rate, 1), system=target
                )
                log(f"latency {target}: p50 {lat.p50_ms:.0f} ms, p99 {lat.p99_ms:.0f} ms")
                report.latencies.append(lat)
        if failover:
            report.failover = _failover(cluster, broker, pair_url, devices, rate)
            log(f"failover: {report.failover.seconds:.1f} s")
    return report


@contextmanager
def _cluster(broker: LocalMosquitto) -> Iterator[LocalPatroni]:
    root = broker.base_dir.parent / "ha"
    etcd = LocalEtcd(root / "etcd")
    cluster = LocalPatroni(root / "patroni", etcd, parameters={"track_commit_timestamp": "on"})
    try:
        etcd.start()
        cluster.start()
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        migrate(cluster.url_for("bench"))
        yield cluster
    finally:
        cluster.stop()
        etcd.stop()


def _failover(
    cluster: LocalPatroni, broker: LocalMosquitto, url: str, devices: int, rate: float
) -> Failover:
    """A paced stream of 60 s of messages; the primary SIGKILLed once 5,000 are stored."""
    count = int(rate * 60)
    _truncate(url)
    with _consumers("silobreak", broker.url, url, 1, "hafail"):
        args = ["--devices", str(devices), "--messages", str(count), "--rate", str(rate)]
        publisher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "silobreak.bench.publish",
                broker.url,
                "--prefix",
                PREFIX,
                *args,
            ],
            stdout=subprocess.DEVNULL,
            env=os.environ,
        )
        try:
            wait_for(lambda: _count(url) >= _STORED_BEFORE_KILL, _TIMEOUT_S, "rows to store")
            old = cluster.wait_primary()
            killed_at = time.time()
            cluster.crash(old)
            new = cluster.wait_primary(not_this=old)
            if publisher.wait(_TIMEOUT_S) != 0:
                raise RuntimeError(f"the publisher failed: exit {publisher.returncode}")
        finally:
            if publisher.poll() is None:
                publisher.kill()
                publisher.wait()
        with contextlib.suppress(RuntimeError):  # what is missing is reported below
            _wait_stored(url, "silobreak", count)
    with psycopg.connect(cluster.member_url(new, "bench")) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM min(pg_xact_commit_timestamp(xmin)) FILTER"
            " (WHERE pg_xact_commit_timestamp(xmin) > to_timestamp(%s))) FROM readings_air_sensor",
            [killed_at],
        ).fetchone()
    if row is None or row[1] is None:
        raise RuntimeError("no commit on the new primary after the failover")
    return Failover(messages=count, stored=int(row[0]), seconds=float(row[1]) - killed_at)


def _count(url: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM readings_air_sensor").fetchone()
    except psycopg.OperationalError:
        return 0
    return int(row[0]) if row is not None else 0
