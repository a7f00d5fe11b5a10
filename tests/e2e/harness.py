"""Drive whole-pipeline tests: ingestor processes, a fast publisher, and row counts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from devices.registry import DeviceRecord, new_record
from mqtt import MqttError, MqttPublisher
from silobreak.local import free_port
from store.registry import upsert_devices

REPO = Path(__file__).resolve().parents[2]
TYPES = ("streetlight", "traffic_light", "air_sensor", "meter")
PHASES = ("red", "amber", "green", "flashing_amber", "off")


class IngestProcess:
    """`silobreak ingest` (or another long-running subcommand) as a child process, its log
    read on a thread."""

    def __init__(self, env: dict[str, str], cwd: Path, args: Sequence[str] = ("ingest",)) -> None:
        self.metrics_port = int(env.get("SILOBREAK_METRICS_PORT", "0"))
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "silobreak", *args],
            env={**os.environ, **env},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_log(self, text: str, timeout: float = 30.0, start: int = 0) -> int:
        """Wait until a log line (from index `start`) contains `text`; returns its index."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(start, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "\n".join(self.lines[-20:])
                    raise AssertionError(f"no log line with {text!r} in {timeout}s:\n{tail}")
                self._cond.wait(min(left, 0.2))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    def metric(self, name: str) -> float:
        """A value from the ingestor's Prometheus endpoint (0 when not yet exported)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def health(self) -> tuple[int, str]:
        """The ingestor's /healthz: (HTTP status, body)."""
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])


def ingest_env(mqtt_url: str, db_url: str, client_id: str, **extra: str) -> dict[str, str]:
    env = {
        "SILOBREAK_MQTT_URL": mqtt_url,
        "SILOBREAK_DATABASE_URL": db_url,
        "SILOBREAK_INGEST_CLIENT_ID": client_id,
        "SILOBREAK_METRICS_PORT": str(free_port()),
        "SILOBREAK_REGISTRY_REFRESH": "200ms",
        "SILOBREAK_INGEST_SESSION_EXPIRY": "10m",
        "SILOBREAK_INGEST_BATCH_SIZE": "1000",
    }
    env.update({f"SILOBREAK_{k.upper()}": v for k, v in extra.items()})
    return env


def fleet(prefix: str, per_type: int) -> list[DeviceRecord]:
    """`per_type` devices of each type; meters alternate water and electricity owners."""
    records = []
    for t in TYPES:
        for i in range(per_type):
            medium = ("water" if i % 2 else "electricity") if t == "meter" else None
            records.append(
                new_record(f"{prefix}{t}-{i:03d}", t, district=f"d{i % 3}", medium=medium)
            )
    return records


def register(db_url: str, records: Sequence[DeviceRecord]) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_devices(conn, records)


def metrics_for(device_type: str, n: int) -> dict[str, Any]:
    """Valid metrics for message number `n` of a device of this type."""
    if device_type == "streetlight":
        return {"lamp_on": n % 2 == 0, "dim_level": float(n % 101), "power_w": 40.0 + n % 50}
    if device_type == "traffic_light":
        return {"phase": PHASES[n % 5], "vehicle_count": n % 40}
    if device_type == "air_sensor":
        return {"pm25": 5.0 + n % 30, "pm10": 9.5, "no2": float(n % 90), "o3": 60.25}
    return {"index": 1000.0 + n, "flow": 0.5}


def messages(
    records: Sequence[DeviceRecord], per_device: int, *, end: datetime | None = None
) -> list[tuple[str, bytes, str, dict[str, Any], datetime]]:
    """(topic, payload, device_id, metrics, time): per device, one a second up to `end`."""
    end = end or datetime.now(UTC).replace(microsecond=0)
    out = []
    for k in range(per_device):
        ts = end - timedelta(seconds=per_device - k)
        for rec in records:
            m = metrics_for(rec.device_type, k)
            body = {"ts": ts.isoformat().replace("+00:00", "Z"), "seq": k, "metrics": m}
            out.append(
                (
                    f"devices/{rec.device_id}/telemetry",
                    json.dumps(body).encode(),
                    rec.device_id,
                    m,
                    ts,
                )
            )
    return out


def publish(url: str, items: Iterable[tuple[str, bytes]], client_id: str) -> int:
    """Publish QoS 1 and wait for every PUBACK; returns how many were sent."""

    async def go() -> int:
        pub = MqttPublisher(url, client_id=client_id, window=1000)
        await pub.start()
        try:
            await pub.publish_many(items)
            await pub.flush()
            return pub.published
        finally:
            await pub.stop()

    return asyncio.run(go())


def publish_in_background(
    url: str, items: Sequence[tuple[str, bytes]], client_id: str, *, rate: float
) -> threading.Thread:
    """Publish at about `rate` messages/s on a thread (so faults can strike mid-run)."""

    async def go() -> None:
        pub = MqttPublisher(url, client_id=client_id, window=1000)
        await pub.start()
        step = max(1, int(rate / 20))
        started = time.monotonic()
        for i in range(0, len(items), step):
            await pub.publish_many(items[i : i + step])
            ahead = (i + step) / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await pub.flush()
        await pub.stop()

    thread = threading.Thread(target=lambda: asyncio.run(go()), daemon=True)
    thread.start()
    return thread


def query(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def message_count(db_url: str, prefix: str) -> int:
    """Messages stored for this test's devices (one wide row per message)."""
    rows = query(
        db_url,
        "SELECT (SELECT count(*) FROM readings_streetlight WHERE device_id LIKE %s)"
        " + (SELECT count(*) FROM readings_traffic_light WHERE device_id LIKE %s)"
        " + (SELECT count(*) FROM readings_air_sensor WHERE device_id LIKE %s)"
        " + (SELECT count(*) FROM readings_meter WHERE device_id LIKE %s)",
        *([prefix + "%"] * 4),
    )
    return int(rows[0][0])


def wait_for_messages(db_url: str, prefix: str, expected: int, timeout: float = 60.0) -> None:
    """Wait until `expected` messages are stored; more than that fails at once."""
    wait_until(lambda: message_count(db_url, prefix) >= expected, timeout, f"{expected} messages")
    assert message_count(db_url, prefix) == expected


class Publishing:
    """Publishes QoS 1 at about `rate` messages/s on a thread of its own, as a device should:
    when its connection drops it reconnects and sends again every message not yet
    acknowledged, and it sends again what the broker acknowledged as routed to no subscriber
    (reason 0x10: Mosquitto 2.0 forgets shared subscriptions over a restart until the
    ingestors subscribe again). At least once; the store's idempotent insert makes that
    exactly once.

    `join()` waits for the last PUBACK and re-raises what stopped the thread, if anything.
    """

    # Messages sent between two waits for every PUBACK: what a dropped connection resends.
    FLUSH_EVERY = 500
    # A broker restart or a cut link is over in seconds; past this the publisher gives up.
    GIVE_UP_S = 120.0

    def __init__(
        self, url: str, items: Sequence[tuple[str, bytes]], client_id: str, *, rate: float
    ) -> None:
        self.url = url
        self.items = items
        self.client_id = client_id
        self.rate = rate
        self.reconnects = 0
        self.resent_unrouted = 0  # chunks sent again after a 0x10 PUBACK
        self.acked = 0  # items[:acked] are acknowledged by the broker
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def join(self, timeout: float = 120.0) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"publisher still running after {timeout}s ({self.acked} acked)")
        if self.error is not None:
            raise self.error

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:
            self.error = exc

    async def _publish(self) -> None:
        pub = await self._connect()
        step = max(1, int(self.rate / 20))
        started = time.monotonic()
        sent = 0
        while self.acked < len(self.items):
            try:
                while sent < len(self.items):
                    await pub.publish_many(self.items[sent : sent + step])
                    sent = min(sent + step, len(self.items))
                    if sent - self.acked >= self.FLUSH_EVERY or sent == len(self.items):
                        await pub.flush()
                        if pub.unrouted:
                            pub.unrouted = 0
                            sent = self.acked
                            self.resent_unrouted += 1
                            await asyncio.sleep(0.2)  # for a subscriber to come back
                            continue
                        self.acked = sent
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            except MqttError:
                sent = self.acked
                pub = await self._connect()
                self.reconnects += 1
        await pub.stop()

    async def _connect(self) -> MqttPublisher:
        deadline = time.monotonic() + self.GIVE_UP_S
        while True:
            pub = MqttPublisher(self.url, client_id=self.client_id, window=1000)
            try:
                await pub.start()
            except MqttError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
            return pub
