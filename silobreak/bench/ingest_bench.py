"""`silobreak bench ingest`: end-to-end ingest throughput and latency against a baseline."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from devices.registry import new_record
from silobreak.bench.baseline import TABLE_DDL
from silobreak.bench.machine import describe_machine
from silobreak.bench.servers import bench_servers
from silobreak.local import LocalMosquitto
from store.registry import upsert_devices

PREFIX: Final = "bench-air-"
# Generous: the slowest system here stores 200,000 messages in well under a minute.
_DRAIN_TIMEOUT_S: Final = 300.0
_POLL_S: Final = 0.05
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Run:
    system: str
    messages: int
    seconds: float  # first publish to last commit
    publish_seconds: float  # first publish to last PUBACK from the broker
    cpu_us_per_message: float  # consumer process(es) CPU, user + system

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass(frozen=True, slots=True)
class Latency:
    system: str
    rate: float
    messages: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass(slots=True)
class Report:
    runs: list[Run] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)

    def median_rate(self, system: str) -> float:
        return statistics.median(r.rate for r in self.runs if r.system == system)

    def median_cpu(self, system: str) -> float:
        return statistics.median(r.cpu_us_per_message for r in self.runs if r.system == system)

    def paired_ratios(self, first: str = "silobreak", second: str = "baseline") -> list[float]:
        """`first`'s rate over `second`'s, run by run (they alternate)."""
        return [
            a.rate / b.rate
            for a, b in zip(
                [r for r in self.runs if r.system == first],
                [r for r in self.runs if r.system == second],
                strict=False,
            )
        ]

    def markdown(self, *, ingestors: int) -> str:
        systems = list(dict.fromkeys(r.system for r in self.runs))
        machine = (
            f"Machine: {describe_machine()}; broker, ingest and PostgreSQL on the same "
            f"machine; {ingestors} silobreak ingestor(s)."
        )
        header = (
            "| system | runs | messages/run | median msg/s | median readings/s | runs (msg/s) "
            "| consumer CPU µs/msg |"
        )
        lines = [machine, "", header, "|---|---|---|---|---|---|---|"]
        for system in systems:
            runs = [r for r in self.runs if r.system == system]
            rate = self.median_rate(system)
            each = ", ".join(f"{r.rate:,.0f}" for r in runs)
            lines.append(
                f"| {system} | {len(runs)} | {runs[0].messages:,} | {rate:,.0f} "
                f"| {4 * rate:,.0f} | {each} | {self.median_cpu(system):.1f} |"
            )
        if len(systems) == 2:  # a system and what it is measured against
            first, second = systems
            ratios = self.paired_ratios(first, second)
            paired = ", ".join(f"{x:.2f}x" for x in ratios)
            median = statistics.median(ratios)
            lines += ["", f"{first} / {second}, per paired run: {paired}; median {median:.2f}x."]
        if self.latencies:
            lines += [
                "",
                "| system | fixed rate (msg/s) | messages | p50 publish→commit | p99 | max |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {x.system} | {x.rate:,.0f} | {x.messages:,} | {x.p50_ms:.0f} ms | "
                f"{x.p99_ms:.0f} ms | {x.max_ms:.0f} ms |"
                for x in self.latencies
            ]
        return "\n".join(lines)


def run_ingest_bench(
    *,
    messages: int = 200_000,
    devices: int = 1000,
    runs: int = 3,
    rate: float = 5000.0,
    latency_seconds: float = 10.0,
    ingestors: int = 1,
    baseline: bool = True,
    log: Callable[[str], None] = print,
) -> Report:
    """Measure silobreak and the baseline alternately, on a broker and database of their own."""
    report = Report()
    with bench_servers("bench", commit_timestamps=True) as (broker, db_url):
        _register(db_url, devices)
        systems = ["silobreak", "baseline"] if baseline else ["silobreak"]
        for i in range(runs):
            for system in systems:
                run = _throughput(system, broker, db_url, messages, devices, ingestors, i)
                log(f"run {i + 1}/{runs} {system}: {run.rate:,.0f} msg/s")
                report.runs.append(run)
        if latency_seconds > 0:
            count = int(rate * latency_seconds)
            for system in systems:
                lat = _latency(system, broker, db_url, count, devices, rate, ingestors)
                log(f"latency {system}: p50 {lat.p50_ms:.0f} ms, p99 {lat.p99_ms:.0f} ms")
                report.latencies.append(lat)
    return report


def _register(db_url: str, devices: int) -> None:
    records = [new_record(f"{PREFIX}{d:05d}", "air_sensor") for d in range(devices)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_devices(conn, records)


def _throughput(
    system: str,
    broker: LocalMosquitto | str,
    db_url: str,
    messages: int,
    devices: int,
    ingestors: int,
    index: int,
    env: Callable[[int], dict[str, str]] | None = None,
) -> Run:
    """One run: `system`'s consumers (silobreak ingest unless "baseline") on `broker` (or a
    broker URL), `env(n)` added to ingestor n's environment."""
    url = broker if isinstance(broker, str) else broker.url
    _truncate(db_url)
    with _consumers(system, url, db_url, ingestors, f"{index}", env) as procs:
        result = _publish(url, ["--devices", str(devices), "--messages", str(messages)])
        _wait_stored(db_url, system, messages)
        cpu = sum(_cpu_seconds(p.pid) for p in procs)
    last_commit = _last_commit(db_url, system)
    return Run(
        system=system,
        messages=messages,
        seconds=last_commit - result["started"],
        publish_seconds=result["finished"] - result["started"],
        cpu_us_per_message=cpu / messages * 1e6,
    )


def _latency(
    system: str,
    broker: LocalMosquitto,
    db_url: str,
    count: int,
    devices: int,
    rate: float,
    ingestors: int,
) -> Latency:
    _truncate(db_url)
    with _consumers(system, broker.url, db_url, ingestors, "lat"):
        args = ["--devices", str(devices), "--messages", str(count), "--rate", str(rate)]
        _publish(broker.url, args)
        _wait_stored(db_url, system, count)
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY d), max(d) FROM"
                " (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - time) * 1000 AS d"
                " FROM {}) AS x"
            ).format(_table(system))
        ).fetchone()
    assert row is not None
    return Latency(system, rate, count, row[0][0], row[0][1], float(row[1]))


@contextmanager
def _consumers(
    system: str,
    mqtt_url: str,
    db_url: str,
    ingestors: int,
    tag: str,
    more_env: Callable[[int], dict[str, str]] | None = None,
) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        count = ingestors if system != "baseline" else 1
        for n in range(count):
            client = f"bench-{system}-{tag}-{n}"
            if system != "baseline":
                cmd = [sys.executable, "-m", "silobreak", "ingest"]
            else:
                cmd = [sys.executable, "-m", "silobreak.bench.baseline", mqtt_url, db_url, client]
            env = {
                **os.environ,
                "SILOBREAK_MQTT_URL": mqtt_url,
                "SILOBREAK_DATABASE_URL": db_url,
                "SILOBREAK_INGEST_CLIENT_ID": client,
                # No session left behind to collect copies of the next run's messages.
                "SILOBREAK_INGEST_SESSION_EXPIRY": "0s",
                "SILOBREAK_METRICS_PORT": "0",
                **(more_env(n) if more_env is not None else {}),
            }
            proc = subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            procs.append(proc)
            _wait_line(proc, "subscribed")
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _wait_line(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if text in line:
            # Keep draining its log so the pipe never fills and blocks the process.
            _drain(proc)
            return
    raise RuntimeError(f"consumer exited before it was {text}: code {proc.wait()}")


def _drain(proc: subprocess.Popen[str]) -> None:
    import threading  # noqa: PLC0415

    def pump() -> None:
        assert proc.stderr is not None
        for _ in proc.stderr:
            pass

    threading.Thread(target=pump, daemon=True).start()


def _publish(url: str, args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "silobreak.bench.publish", url, "--prefix", PREFIX, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _count_sql(system: str) -> str:
    if system != "baseline":
        return "SELECT count(*) FROM readings_air_sensor"
    return "SELECT count(*) / 4 FROM baseline_readings"


def _wait_stored(db_url: str, system: str, expected: int) -> None:
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            row = conn.execute(_count_sql(system)).fetchone()
            if row is not None and row[0] >= expected:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: only {row[0] if row else 0} of {expected} stored")
            time.sleep(_POLL_S)


def _last_commit(db_url: str, system: str) -> float:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT extract(epoch FROM max(pg_xact_commit_timestamp(xmin))) FROM {}"
            ).format(_table(system))
        ).fetchone()
    assert row is not None
    return float(row[0])


def _table(system: str) -> sql.Identifier:
    return sql.Identifier("baseline_readings" if system == "baseline" else "readings_air_sensor")


def _truncate(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("TRUNCATE readings_air_sensor")
        conn.execute(TABLE_DDL)
        conn.execute("TRUNCATE baseline_readings")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK
