"""`silobreak bench overload`: publish faster than ingest stores; memory stays bounded, nothing
is lost, and the backlog drains."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from devices.registry import new_record
from silobreak.bench.overload_publish import PREFIX
from silobreak.bench.servers import bench_servers
from silobreak.local import LocalMosquitto, free_port
from store.registry import upsert_devices

# RSS and progress are sampled this often: enough points to see a trend in a 10 s run.
_SAMPLE_S: Final = 0.5
# Sealed batches that may wait plus the one filling (ingest/service.py's _MAX_SEALED + 1).
_BATCHES_IN_HAND: Final = 3
# The broker must hold the whole backlog: past max_queued_messages / max_queued_bytes
# Mosquitto drops QoS 1 messages for the slow subscriber while still acknowledging them to
# the publisher. Sized for a 10-minute run at the broker's full speed here (~100k msg/s).
_BROKER_QUEUE: Final = "max_queued_messages 100000000\nmax_queued_bytes 0\n"
# Its $SYS counters every second: when the broker drops messages, the report says so.
_BROKER_STATS: Final = "sys_interval 1\n"
_DROPPED_TOPIC: Final = "$SYS/broker/publish/messages/dropped"
_STORED_TOPIC: Final = "$SYS/broker/store/messages/count"
_STARTED_TIMEOUT_S: Final = 60.0
# The drain has ended when nothing more is stored for this long (all of it, or some lost).
# Mosquitto stops for its autosave (every 60 s), ~5 s with 10M messages in hand here.
_STALLED_S: Final = 120.0


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the publishers started
    stored: int  # messages the ingestor has committed
    ingest_rss_kib: int
    broker_rss_kib: int
    broker_stored: int  # messages the broker holds (its $SYS store count)
    broker_dropped: int  # messages it has dropped so far (queue limits)


@dataclass(slots=True)
class OverloadReport:
    seconds: float
    publishers: int
    batch_size: int
    receive_maximum: int
    published: int = 0
    acked: int = 0
    unrouted: int = 0
    publish_seconds: float = 0.0
    stored_while_publishing: int = 0
    drain_seconds: float = 0.0
    stored: int = 0
    rejected: int = 0  # dead-lettered: none, unless the load itself is wrong
    duplicates: int = 0  # rows ingest found stored already (redeliveries)
    idle_rss_kib: int = 0
    samples: list[Sample] = field(default_factory=list)

    @property
    def publish_rate(self) -> float:
        return self.acked / self.publish_seconds

    @property
    def ingest_rate(self) -> float:
        """What ingest stored per second while the publishers ran."""
        return self.stored_while_publishing / self.publish_seconds

    @property
    def drain_rate(self) -> float:
        left = self.stored - self.stored_while_publishing
        return left / self.drain_seconds if self.drain_seconds else 0.0

    @property
    def lost(self) -> int:
        return self.acked - self.stored - self.rejected

    @property
    def broker_dropped(self) -> int:
        return self.samples[-1].broker_dropped if self.samples else 0

    @property
    def peak_rss_kib(self) -> int:
        return max(s.ingest_rss_kib for s in self.samples)

    @property
    def bound_messages(self) -> int:
        """Messages the ingestor may hold: its batches in hand, or the broker's window."""
        return min(self.receive_maximum, _BATCHES_IN_HAND * self.batch_size)

    def markdown(self) -> str:
        peak_broker = max(s.broker_rss_kib for s in self.samples)
        backlog = self.acked - self.stored_while_publishing
        rows = [
            (
                "published, acknowledged by the broker",
                f"{self.acked:,} ({self.publish_rate:,.0f} msg/s)",
            ),
            ("routed to no subscriber (PUBACK 0x10)", f"{self.unrouted:,}"),
            (
                "stored while publishing",
                f"{self.stored_while_publishing:,} ({self.ingest_rate:,.0f} msg/s)",
            ),
            (
                "overload (publish rate / ingest rate)",
                f"{self.publish_rate / self.ingest_rate:.1f}x",
            ),
            ("backlog when publishing stopped", f"{backlog:,}"),
            ("time to drain it", f"{self.drain_seconds:.1f} s ({self.drain_rate:,.0f} msg/s)"),
            (
                "stored / dead-lettered / lost",
                f"{self.stored:,} / {self.rejected:,} / {self.lost:,}",
            ),
            ("dropped by the broker ($SYS)", f"{self.broker_dropped:,}"),
            ("stored twice, found by ingest (redeliveries)", f"{self.duplicates:,}"),
            ("ingest RSS idle / peak", f"{_mib(self.idle_rss_kib)} / {_mib(self.peak_rss_kib)}"),
            ("ingest messages in hand, at most", f"{self.bound_messages:,}"),
            ("broker RSS peak (it holds the backlog)", _mib(peak_broker)),
        ]
        head = (
            f"{self.publishers} publisher process(es) for {self.seconds:g} s; ingest batch size "
            f"{self.batch_size:,}, receive maximum {self.receive_maximum:,}."
        )
        table = ["| measure | value |", "|---|---|", *(f"| {m} | {v} |" for m, v in rows)]
        series = "Ingest RSS over time (MiB): " + _rss_series(self.samples)
        return "\n".join([head, "", *table, "", series])


def run_overload_bench(
    *,
    seconds: float = 60.0,
    publishers: int = 3,
    devices: int = 1000,
    batch_size: int = 5000,
    receive_maximum: int = 20_000,
    store_delay_s: float = 0.0,
    log: Callable[[str], None] = print,
) -> OverloadReport:
    """Overload one ingestor for `seconds`, then wait for the backlog to drain.

    `store_delay_s` makes every write statement into the readings table take at least that
    long (a statement trigger that sleeps), which caps ingest at `batch_size / store_delay_s`
    messages a second whatever the machine's speed: the overload is then certain by
    construction, not a race between the publisher and the store.
    """
    report = OverloadReport(seconds, publishers, batch_size, receive_maximum)
    with bench_servers("overload", broker_config=_BROKER_QUEUE + _BROKER_STATS) as (broker, db_url):
        with psycopg.connect(db_url, autocommit=True) as conn:
            upsert_devices(
                conn, [new_record(f"{PREFIX}{d:05d}", "air_sensor") for d in range(devices)]
            )
            if store_delay_s > 0:
                _slow_store(conn, store_delay_s)
        env = {
            "SILOBREAK_MQTT_URL": broker.url,
            "SILOBREAK_DATABASE_URL": db_url,
            "SILOBREAK_INGEST_CLIENT_ID": "overload-ingest",
            "SILOBREAK_INGEST_BATCH_SIZE": str(batch_size),
            "SILOBREAK_INGEST_RECEIVE_MAXIMUM": str(receive_maximum),
            "SILOBREAK_METRICS_PORT": str(free_port()),
        }
        with _ingestor(env, log) as ingest:
            time.sleep(1.0)  # settled after start-up: the idle footprint
            report.idle_rss_kib = _rss_kib(ingest.pid)
            _overload(report, broker, ingest, int(env["SILOBREAK_METRICS_PORT"]), devices, log)
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM readings_air_sensor),"
                " (SELECT count(*) FROM rejected_messages)"
            ).fetchone()
        assert row is not None
        report.stored, report.rejected = int(row[0]), int(row[1])
    return report


def _slow_store(conn: psycopg.Connection[Any], delay_s: float) -> None:
    """Every statement that writes air-sensor readings sleeps `delay_s` first."""
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION overload_slow_store() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN PERFORM pg_sleep({}); RETURN NULL; END$$"
        ).format(sql.Literal(delay_s))
    )
    conn.execute(
        "CREATE TRIGGER overload_slow_store BEFORE INSERT ON readings_air_sensor"
        " FOR EACH STATEMENT EXECUTE FUNCTION overload_slow_store()"
    )


def _overload(
    report: OverloadReport,
    broker: LocalMosquitto,
    ingest: subprocess.Popen[str],
    metrics_port: int,
    devices: int,
    log: Callable[[str], None],
) -> None:
    broker_pid = int((broker.base_dir / "mosquitto.pid").read_text().strip())
    stats = _BrokerStats(broker.url)
    # One time base for all publishers (epoch ms, two hours back: inside the accepted window);
    # each interleaves its times with the others', so no two messages share (device, time),
    # which the store would take for one message sent twice.
    base_ms = int(time.time() * 1000) - 2 * 3600 * 1000
    procs = [_publisher(broker.url, report, i, devices, base_ms) for i in range(report.publishers)]
    started = time.monotonic()

    def sample() -> Sample:
        stored = _metric(metrics_port, "silobreak_ingest_stored_total")
        at = time.monotonic() - started
        rss = _rss_kib(ingest.pid), _rss_kib(broker_pid)
        return Sample(at, stored, *rss, stats.get(_STORED_TOPIC), stats.get(_DROPPED_TOPIC))

    try:
        _publish_and_drain(report, procs, sample, log)
        report.duplicates = _metric(metrics_port, "silobreak_ingest_duplicates_total")
    finally:
        stats.stop()
        for proc in procs:  # still running only when the bench failed
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def _publish_and_drain(
    report: OverloadReport,
    procs: list[subprocess.Popen[str]],
    sample: Callable[[], Sample],
    log: Callable[[str], None],
) -> None:
    while any(p.poll() is None for p in procs):
        report.samples.append(sample())
        time.sleep(_SAMPLE_S)
    results = [_result(p) for p in procs]
    stopped = sample()
    report.samples.append(stopped)
    report.published = sum(r["published"] for r in results)
    report.acked = sum(r["acked"] for r in results)
    report.unrouted = sum(r["unrouted"] for r in results)
    first, last = min(r["started"] for r in results), max(r["finished"] for r in results)
    report.publish_seconds = last - first
    report.stored_while_publishing = stopped.stored
    log(f"published {report.acked:,} in {report.publish_seconds:.1f} s; {stopped.stored:,} stored")
    now = progress = stopped
    while now.stored < report.acked and now.at - progress.at < _STALLED_S:
        time.sleep(_SAMPLE_S / 5)
        now = sample()
        if now.stored > progress.stored:
            progress = now
        if now.at - report.samples[-1].at >= _SAMPLE_S:
            report.samples.append(now)
    report.samples.append(progress)
    report.drain_seconds = progress.at - stopped.at
    log(f"drained in {report.drain_seconds:.1f} s")


@contextmanager
def _ingestor(env: dict[str, str], log: Callable[[str], None]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "silobreak", "ingest"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader: threading.Thread | None = None
    try:
        reader = _follow(proc, "subscribed", log)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if reader is not None:
            reader.join(5)
        assert proc.stderr is not None
        proc.stderr.close()


def _follow(proc: subprocess.Popen[str], text: str, log: Callable[[str], None]) -> threading.Thread:
    """Wait for a log line with `text`; then keep reading the log, so the pipe never fills,
    and pass its warnings and errors on (a reconnect or a store failure explains a number)."""
    assert proc.stderr is not None
    stderr = proc.stderr
    seen = threading.Event()
    tail: list[str] = []

    def pump() -> None:
        for line in stderr:
            tail[:] = [*tail[-20:], line.rstrip()]
            if text in line:
                seen.set()
            elif seen.is_set() and (" WARNING " in line or " ERROR " in line):
                log(f"ingest: {line.rstrip()}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + _STARTED_TIMEOUT_S
    while not seen.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("ingest did not start:\n" + "\n".join(tail))
    return reader


def _publisher(
    url: str, report: OverloadReport, index: int, devices: int, base_ms: int
) -> subprocess.Popen[str]:
    args = ["--seconds", str(report.seconds), "--index", str(index), "--base-ms", str(base_ms)]
    args += ["--publishers", str(report.publishers), "--devices", str(devices)]
    return subprocess.Popen(
        [sys.executable, "-m", "silobreak.bench.overload_publish", url, *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"a publisher failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


class _BrokerStats:
    """The broker's latest $SYS counters, read by a subscriber on a thread of its own."""

    def __init__(self, url: str) -> None:
        self._values: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._done: asyncio.Event | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, ready), daemon=True)
        self._thread.start()
        if not ready.wait(_STARTED_TIMEOUT_S):
            raise RuntimeError("could not subscribe to the broker's $SYS topics")

    def get(self, topic: str) -> int:
        return self._values.get(topic, 0)

    def stop(self) -> None:
        if self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(_STARTED_TIMEOUT_S)

    def _run(self, url: str, ready: threading.Event) -> None:
        from mqtt import MqttSubscriber  # noqa: PLC0415

        def on_publish(_packet_id: int, topic: str, payload: bytes) -> None:
            self._values[topic] = int(float(payload))

        async def watch() -> None:
            sub = MqttSubscriber(
                url,
                client_id="overload-stats",
                topic_filters=[_DROPPED_TOPIC, _STORED_TOPIC],
                on_publish=on_publish,
                session_expiry=0,
                clean_start=True,
            )
            self._done = done = asyncio.Event()
            await sub.start()
            ready.set()
            await done.wait()
            await sub.stop()

        self._loop.run_until_complete(watch())
        self._loop.close()


def _metric(metrics_port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def _rss_series(samples: list[Sample]) -> str:
    """About ten points, evenly spaced in time over the run and the drain."""
    step = samples[-1].at / 10
    picked = [samples[0]]
    for sample in samples[1:]:
        if sample.at - picked[-1].at >= step or sample is samples[-1]:
            picked.append(sample)
    return " → ".join(f"{s.at:.0f}s {s.ingest_rss_kib / 1024:.0f}" for s in picked)
