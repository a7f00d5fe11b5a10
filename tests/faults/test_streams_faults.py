"""The streams service killed (SIGKILL) at random moments while readings flow: every
subscription still gets every granted reading, and nothing else, exactly once; and the audit
log holds every delivery batch the consumers got."""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devices.registry import DeviceRecord, new_record
from silobreak.local import LocalMosquitto, free_port
from store.lifecycle import register_devices
from store.principals import add_principal, issue_token
from store.writer import ReadingsWriter
from streams import webhooks
from streams.client import StreamsClient
from tests.e2e.harness import IngestProcess
from tests.support.http import serving

pytestmark = [pytest.mark.integration, pytest.mark.fault]

KILLS = 3
# Each strike comes this long (seeded) after the service answered again: deliveries in flight.
STRIKE_AFTER_S = (0.3, 2.0)
# Writers commit a batch this often, each on its own connection (commits interleave).
WRITE_EVERY_S = 0.04
# Every LATE_EVERY-th batch also holds late readings: an hour old, committed now.
LATE_EVERY = 5
# How long the webhook receiver and the SSE consumer take over a batch before they answer or
# acknowledge it: a kill in that window makes the batch come again.
PROCESS_S = 0.05
CATCH_UP_S = 30.0
# After everything arrived: long enough (many poll ticks) for a stray extra batch to show.
SETTLE_S = 1.5

_ERROR = re.compile(r"^(ERROR|CRITICAL):|\s(ERROR|CRITICAL)\s|^Traceback")

# A reading as delivered, identified by what it is: (device, metric, reading time, value).
Key = tuple[str, str, datetime, float]


def key(reading: dict[str, Any]) -> Key:
    at = datetime.fromisoformat(reading["time"])
    return (reading["device_id"], reading["metric"], at, float(reading["value"]))


# -- the webhook receiver ---------------------------------------------------------------------


class HookReceiver(ThreadingHTTPServer):
    """Keeps every POST (idempotency key, headers, body) as it arrives, then answers 204
    after PROCESS_S: a receiver that has processed a batch the sender never heard about."""

    def __init__(self, port: int) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _HookHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the sender killed while we answer: a broken pipe, expected here


class _HookHandler(BaseHTTPRequestHandler):
    server: HookReceiver

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        if len(body) < length:
            return  # the sender was killed mid-request: nothing was delivered, nothing answered
        with self.server.lock:
            self.server.posts.append(
                (self.headers[webhooks.IDEMPOTENCY_HEADER], dict(self.headers), body)
            )
        time.sleep(PROCESS_S)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def hook_receiver() -> Iterator[HookReceiver]:
    with serving(HookReceiver(free_port())) as server:
        yield server


# -- the writers ------------------------------------------------------------------------------


@dataclass
class Written:
    """What the writers committed: the readings a grant allows, and how many others."""

    granted: list[Key] = field(default_factory=list)
    late: int = 0
    ungranted: int = 0
    batches: int = 0


def city(prefix: str) -> list[DeviceRecord]:
    """Per writer w: two traffic lights in the granted district, one outside it, a lamp."""
    records = []
    for w in (0, 1):
        records += [
            new_record(f"{prefix}tl-n{w}a", "traffic_light", district="north"),
            new_record(f"{prefix}tl-n{w}b", "traffic_light", district="north"),
            new_record(f"{prefix}tl-s{w}", "traffic_light", district="south"),
            new_record(f"{prefix}lamp-n{w}", "streetlight", district="north"),
        ]
    return records


async def write_until(
    db_url: str, prefix: str, w: int, stop: asyncio.Event, written: Written
) -> None:
    """Commit traffic-light and lamp rows every WRITE_EVERY_S until `stop`; some late.

    Granted: vehicle_count of the north traffic lights. Not granted: their `phase` (another
    metric), the south traffic light (another district), the lamp (another device type).
    """
    writer = ReadingsWriter(db_url, name=f"fault-writer-{w}")
    k = 0
    try:
        while not stop.is_set():
            k += 1
            now = datetime.now(UTC)
            count = w * 1_000_000 + k
            lights = [
                (now, f"{prefix}tl-n{w}a", "mobility", 2, count),
                (now, f"{prefix}tl-n{w}b", "mobility", 1, count),
                (now, f"{prefix}tl-s{w}", "mobility", 2, count),
            ]
            late = k % LATE_EVERY == 0
            if late:
                # Devices that were offline an hour ago send what they measured then.
                then = now - timedelta(hours=1)
                lights += [
                    (then, f"{prefix}tl-n{w}b", "mobility", 0, count + 500_000),
                    (then, f"{prefix}tl-s{w}", "mobility", 0, count + 500_000),
                ]
            lamps = [(now, f"{prefix}lamp-n{w}", "lighting", True, 50.0, 40.0 + k % 10)]
            await writer.write({"traffic_light": lights, "streetlight": lamps})
            written.batches += 1
            for at, device, _, _, vehicles in lights:
                if "-tl-n" in device:
                    written.granted.append((device, "vehicle_count", at, float(vehicles)))
                    written.late += at < now
                    written.ungranted += 1  # its phase
                else:
                    written.ungranted += 2
            written.ungranted += 3 * len(lamps)
            await asyncio.sleep(WRITE_EVERY_S)
    finally:
        await writer.close()


# -- the consumers ----------------------------------------------------------------------------


@dataclass
class SseEvent:
    cursor: str
    readings: list[dict[str, Any]]
    acked: bool = True


async def follow_with_client(base: str, token: str, sub_id: str, got: list[SseEvent]) -> None:
    """The Python client: resumes after the last event received (`Last-Event-ID`), acks each."""
    async with StreamsClient(base, token) as client:
        async for event in client.events(sub_id):
            got.append(SseEvent(event.cursor, event.readings))


async def follow_by_ack(
    base: str, token: str, sub_id: str, got: list[SseEvent], refusals: list[str]
) -> None:
    """A consumer that keeps no position of its own: it acknowledges each event once
    processed, and after any drop connects again without a cursor, so the server resumes
    after the last position it stored for it."""
    auth = {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(5.0, read=30.0)
    path = f"/v1/subscriptions/{sub_id}"
    async with httpx.AsyncClient(base_url=base, headers=auth, timeout=timeout) as http:
        while True:
            try:
                async with http.stream("GET", f"{path}/events") as response:
                    if response.status_code != 200:
                        refusals.append(f"{response.status_code} {(await response.aread())!r}")
                        await asyncio.sleep(0.2)
                        continue
                    fields: dict[str, str] = {}
                    async for line in response.aiter_lines():
                        if line:
                            name, _, value = line.partition(":")
                            if name:
                                fields[name] = value.removeprefix(" ")
                            continue
                        event, fields = fields, {}
                        if event.get("event") == "end":
                            refusals.append(f"the feed ended: {event.get('data')}")
                            return
                        if event.get("event") != "readings":
                            continue
                        received = SseEvent(event["id"], json.loads(event["data"])["readings"])
                        got.append(received)
                        await asyncio.sleep(PROCESS_S)
                        received.acked = await _ack(http, path, received.cursor)
                        if not received.acked:
                            break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


async def _ack(http: httpx.AsyncClient, path: str, cursor: str) -> bool:
    try:
        response = await http.post(f"{path}/ack", json={"cursor": cursor})
    except httpx.TransportError:
        return False
    return response.status_code == 200


class MqttConsumer:
    """Subscribed QoS 1 to the subscription's topic; keeps each delivery in arrival order."""

    def __init__(self, broker: LocalMosquitto, client_id: str, topic: str) -> None:
        self.batches: list[dict[str, Any]] = []
        subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_message = lambda _c, _u, msg: self.batches.append(json.loads(msg.payload))
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.connect("127.0.0.1", broker.port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()
        assert subscribed.wait(10), "MQTT subscription not acknowledged"

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# -- the service ------------------------------------------------------------------------------


class StreamsService:
    """`silobreak streams` as a child process, killed and started again on the same port."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.base = f"http://127.0.0.1:{env['SILOBREAK_API_PORT']}"
        self.runs: list[IngestProcess] = []

    @property
    def current(self) -> IngestProcess:
        return self.runs[-1]

    async def start(self) -> float:
        """Start a process; returns the seconds until it answered /healthz."""
        began = time.monotonic()
        self.runs.append(IngestProcess(self.env, self.cwd, ("streams",)))
        async with httpx.AsyncClient(base_url=self.base, timeout=2.0) as http:
            while True:
                assert self.current.proc.poll() is None, "\n".join(self.current.lines[-30:])
                assert time.monotonic() - began < 30, "the streams service did not come up"
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        return time.monotonic() - began
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        self.current.kill()
        self.current.stop()  # closes its log reader

    def stop(self) -> None:
        for run in self.runs:
            run.stop()

    def warnings(self) -> list[str]:
        return [line for run in self.runs for line in run.lines if " WARNING " in line]

    def errors(self) -> list[str]:
        """Error lines and tracebacks any run logged (uvicorn's format, or silobreak's)."""
        return [line for run in self.runs for line in run.lines if _ERROR.search(line)]


def principals(db_url: str, records: list[DeviceRecord]) -> dict[str, str]:
    tokens = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        register_devices(conn, records, actor="test")
        for name in ("mobility", "lighting", "planning"):
            add_principal(conn, name, "team" if name == "planning" else "service", actor="test")
            tokens[name] = issue_token(conn, name, ttl=timedelta(days=1), actor="test").token
    return tokens


# -- the test ---------------------------------------------------------------------------------


def test_streams_killed_at_random_moments_delivers_every_granted_reading_once(
    db_url: str,
    mqtt_broker: LocalMosquitto,
    device_prefix: str,
    hook_receiver: HookReceiver,
    fault_seed: int,
    tmp_path: Path,
) -> None:
    rng = random.Random(fault_seed)
    p = device_prefix
    tokens = principals(db_url, city(p))
    hook_prefix = f"http://127.0.0.1:{hook_receiver.server_port}/hooks/"
    service = StreamsService(
        {
            "SILOBREAK_DATABASE_URL": db_url,
            "SILOBREAK_MQTT_URL": mqtt_broker.url,
            "SILOBREAK_API_HOST": "127.0.0.1",
            "SILOBREAK_API_PORT": str(free_port()),
            "SILOBREAK_STREAMS_POLL_INTERVAL": "100ms",
            "SILOBREAK_STREAMS_WEBHOOK_ALLOW": json.dumps([hook_prefix]),
            "SILOBREAK_STREAMS_WEBHOOK_BACKOFF": "50ms",
            "SILOBREAK_STREAMS_WEBHOOK_BACKOFF_MAX": "200ms",
        },
        tmp_path,
    )
    written = Written()
    by_client: list[SseEvent] = []
    by_ack: list[SseEvent] = []
    refusals: list[str] = []
    mqtt: MqttConsumer | None = None

    async def run() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        nonlocal mqtt
        await service.start()
        expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        async with StreamsClient(service.base, tokens["mobility"]) as owner:
            grant = await owner.create_grant(
                owner="mobility", consumer="planning", device_types=["traffic_light"],
                metrics=["vehicle_count"], districts=["north"], granularity="raw",
                purpose="traffic study", expires_at=expires,
            )  # fmt: skip
        async with StreamsClient(service.base, tokens["planning"]) as consumer:
            subs = {
                kind: await consumer.create_subscription(grant_id=grant["id"], **spec)
                for kind, spec in {
                    "webhook": {"delivery": "webhook", "webhook_url": hook_prefix + "planning"},
                    "sse-client": {"delivery": "sse"},
                    "sse-ack": {"delivery": "sse"},
                    "mqtt": {"delivery": "mqtt"},
                }.items()
            }
        mqtt = MqttConsumer(mqtt_broker, f"{p}deliveries", subs["mqtt"]["topic"])
        stop = asyncio.Event()
        token = tokens["planning"]
        writers = [asyncio.create_task(write_until(db_url, p, w, stop, written)) for w in (0, 1)]
        consumers = [
            asyncio.create_task(
                follow_with_client(service.base, token, subs["sse-client"]["id"], by_client)
            ),
            asyncio.create_task(
                follow_by_ack(service.base, token, subs["sse-ack"]["id"], by_ack, refusals)
            ),
        ]
        try:
            for n in range(KILLS):
                strike = rng.uniform(*STRIKE_AFTER_S)
                await asyncio.sleep(strike)
                service.kill()
                up = await service.start()
                print(f"kill {n + 1}: {strike:.2f} s after the start; up again in {up:.2f} s")
            await asyncio.sleep(rng.uniform(*STRIKE_AFTER_S))
            stop.set()
            await asyncio.gather(*writers)
            stopped = time.monotonic()
            while any((left := missing(set(written.granted), consumers)).values()):
                waited = time.monotonic() - stopped
                assert waited < CATCH_UP_S, f"delivery did not catch up: missing {left}"
                await asyncio.sleep(0.1)
            print(f"every subscription caught up {time.monotonic() - stopped:.1f} s after writes")
            await asyncio.sleep(SETTLE_S)
            assert service.current.proc.poll() is None, "the streams service died"
            async with StreamsClient(service.base, token) as consumer:
                found = await consumer.request("GET", "/v1/subscriptions")
            return subs, {s["id"]: s for s in found}
        finally:
            stop.set()
            for task in writers + consumers:
                task.cancel()
            await asyncio.gather(*writers, *consumers, return_exceptions=True)

    def missing(expected: set[Key], consumers: list[asyncio.Task[None]]) -> dict[str, int]:
        """Per subscription, how many granted readings it has not received yet."""
        assert mqtt is not None
        for task in consumers:
            if task.done():
                task.result()  # a consumer that stopped: its error fails the test
                raise AssertionError(f"a consumer stopped; refusals: {refusals}")
        received = {
            "webhook": [json.loads(body)["readings"] for _, _, body in list(hook_receiver.posts)],
            "sse-client": [e.readings for e in by_client],
            "sse-ack": [e.readings for e in by_ack],
            "mqtt": [b["readings"] for b in list(mqtt.batches)],
        }
        return {
            kind: len(expected - {key(r) for batch in batches for r in batch})
            for kind, batches in received.items()
        }

    try:
        subs, stored = asyncio.run(run())
    finally:
        service.stop()
        if mqtt is not None:
            mqtt.close()
    assert mqtt is not None

    expected = Counter(written.granted)
    print(
        f"written: {written.batches} batches, {len(expected)} granted readings "
        f"({written.late} late), {written.ungranted} not granted"
    )
    assert len(expected) == len(written.granted)  # each granted reading written once
    assert written.late > 0
    assert written.ungranted > 0
    for line in service.warnings()[:20]:
        print("streams:", line)
    assert refusals == []
    assert service.errors() == []
    assert {s["status"] for s in stored.values()} == {"active"}

    # Webhook: at least once under idempotency keys; deduplicated by key, exactly once.
    last_hook = check_webhook(hook_receiver.posts, subs["webhook"], expected)
    # SSE through the Python client, which resumes after the last event it received.
    check_exactly_once(
        [r for e in by_client for r in e.readings], expected, "SSE through the client"
    )
    # SSE resumed from the acknowledged position alone, and MQTT: at least once, the
    # repeats precisely those the contract allows.
    check_resumed_from_acks(by_ack, expected)
    check_mqtt(mqtt.batches, expected)

    # Each subscription's stored cursor is the position after the last batch it was given.
    cursors = {kind: stored[sub["id"]]["cursor"] for kind, sub in subs.items()}
    assert cursors == {
        "webhook": last_hook,
        "sse-client": by_client[-1].cursor,
        "sse-ack": by_ack[-1].cursor,
        "mqtt": mqtt.batches[-1]["cursor"],
    }

    # The audit log: every batch each consumer got is on record, as it got it.
    audited = delivery_records(db_url)
    check_webhook_audit(audited[subs["webhook"]["id"]], hook_receiver.posts, expected)
    check_mqtt_audit(audited[subs["mqtt"]["id"]], mqtt.batches, subs["mqtt"]["cursor"], expected)
    check_sse_audit(audited[subs["sse-client"]["id"]], by_client, "SSE through the client")
    check_sse_audit(audited[subs["sse-ack"]["id"]], by_ack, "SSE resumed from acks")


# -- the counts -------------------------------------------------------------------------------


def check_exactly_once(readings: list[dict[str, Any]], expected: Counter[Key], what: str) -> None:
    got = Counter(key(r) for r in readings)
    outside = [k for k in got if k not in expected]
    missing = [k for k in expected if k not in got]
    twice = {k: n for k, n in got.items() if n > 1}
    assert outside == [], f"{what}: {len(outside)} reading(s) not granted, e.g. {outside[:3]}"
    assert missing == [], f"{what}: {len(missing)} granted reading(s) missing, e.g. {missing[:3]}"
    assert twice == {}, f"{what}: {len(twice)} reading(s) delivered more than once"
    assert got == expected


def check_webhook(
    posts: list[tuple[str, dict[str, str], bytes]],
    sub: dict[str, Any],
    expected: Counter[Key],
) -> str:
    """Every POST signed; a key sent again carries the same body; keys 1..n in order, each
    batch under one key; deduplicated by key, every granted reading once. Returns the cursor
    of the last batch."""
    bodies: dict[str, bytes] = {}
    first_seen: list[int] = []
    for idempotency_key, headers, body in posts:
        assert webhooks.verify(sub["secret"], headers, body), idempotency_key
        if idempotency_key in bodies:
            assert bodies[idempotency_key] == body, f"{idempotency_key} sent with other content"
            continue
        bodies[idempotency_key] = body
        owner, _, seq = idempotency_key.rpartition("-")
        assert owner == sub["id"]
        first_seen.append(int(seq))
    gaps = sorted(set(range(1, max(first_seen) + 1)) - set(first_seen))
    assert gaps == [], f"webhook batches never received: {gaps}"
    assert first_seen == sorted(first_seen), "webhook batches out of order"
    redelivered = len(posts) - len(bodies)
    print(f"webhook: {len(bodies)} batches, {redelivered} POST(s) of a batch already received")
    batches = [json.loads(bodies[f"{sub['id']}-{seq}"]) for seq in first_seen]
    assert {b["subscription"] for b in batches} == {sub["id"]}
    check_exactly_once(
        [r for b in batches for r in b["readings"]], expected, "webhook, by idempotency key"
    )
    return str(batches[-1]["cursor"])


def check_resumed_from_acks(events: list[SseEvent], expected: Counter[Key]) -> None:
    """Readings come again only from an event whose ack did not get through (the service
    died first), at most one per kill: all of its readings, in the next event (the first
    after the restart), or none if the ack was stored after all. Apart from those repeats,
    every granted reading once."""
    unconfirmed = [n for n, e in enumerate(events) if not e.acked]
    assert len(unconfirmed) <= KILLS
    resent: Counter[Key] = Counter()
    for n in unconfirmed:
        mine = {key(r) for r in events[n].readings}
        later = {key(r) for e in events[n + 1 :] for r in e.readings}
        if mine & later:
            assert mine <= {key(r) for r in events[n + 1].readings}, f"event {n} half resent"
            resent.update(mine)
    got = Counter(key(r) for e in events for r in e.readings)
    again = got - Counter(set(got))
    assert again == resent, f"{len(again - resent)} acknowledged reading(s) sent again"
    print(f"SSE by ack: {len(events)} events, {len(unconfirmed)} unacknowledged, "
          f"{len(again)} reading(s) sent again")  # fmt: skip
    check_exactly_once(
        _first_copies_of(e.readings for e in events), expected, "SSE resumed from acks"
    )


def check_mqtt(batches: list[dict[str, Any]], expected: Counter[Key]) -> None:
    """A batch published again after a kill is the batch just before it, whole, inside the
    first batch after the restart: one such repeat per kill at most."""
    seen: set[Key] = set()
    repeats = 0
    for n, batch in enumerate(batches):
        keys = [key(r) for r in batch["readings"]]
        again = sorted(k for k in keys if k in seen)
        if again:
            repeats += 1
            previous = sorted(key(r) for r in batches[n - 1]["readings"])
            assert again == previous, f"MQTT batch {n} repeats other than batch {n - 1}"
        seen.update(keys)
    assert repeats <= KILLS
    print(f"MQTT: {len(batches)} batches, {repeats} batch(es) published again")
    check_exactly_once(_first_copies_of(b["readings"] for b in batches), expected, "MQTT")


# -- the audit ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One `delivery.batch` row of the audit log."""

    readings: int
    detail: dict[str, Any]

    @property
    def cursor(self) -> str:
        return str(self.detail["cursor"])


def delivery_records(db_url: str) -> dict[str, list[Record]]:
    """Per subscription, its `delivery.batch` rows in the order they were written."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT subscription_id, readings, detail FROM audit_log"
            " WHERE action = 'delivery.batch' ORDER BY id"
        ).fetchall()
    out: dict[str, list[Record]] = {}
    for sub_id, readings, detail in rows:
        out.setdefault(sub_id, []).append(Record(readings, detail))
    return out


def check_webhook_audit(
    records: list[Record], posts: list[tuple[str, dict[str, str], bytes]], expected: Counter[Key]
) -> None:
    """One row per idempotency key the receiver got, in order, with its body's cursor, phase
    and count; a key the receiver got more than once is on record as a redelivery."""
    times = Counter(idempotency_key for idempotency_key, _, _ in posts)
    bodies = {k: json.loads(body) for k, _, body in posts}
    in_order = list(dict.fromkeys(k for k, _, _ in posts))
    assert [r.detail["key"] for r in records] == in_order, "webhook batches on record"
    for r in records:
        body = bodies[r.detail["key"]]
        assert (r.cursor, r.detail["phase"], r.readings) == (
            body["cursor"], body["phase"], len(body["readings"])
        ), r.detail["key"]  # fmt: skip
        assert r.detail["delivery"] == "webhook"
    marked = {r.detail["key"] for r in records if r.detail.get("redelivery")}
    again = {k for k, n in times.items() if n > 1}
    # Marked: sent again from its pending row after a restart (at most one per kill); the
    # receiver may not have had the first copy (the kill came before the POST).
    assert again <= marked, f"redelivered but not marked: {sorted(again - marked)}"
    assert len(marked) <= KILLS
    assert sum(r.readings for r in records) == sum(expected.values())
    print(f"webhook audit: {len(records)} batches, {len(marked)} marked redelivery "
          f"({len(again)} received twice)")  # fmt: skip


def check_mqtt_audit(
    records: list[Record], batches: list[dict[str, Any]], start: str, expected: Counter[Key]
) -> None:
    """Every batch the consumer got is on record, in order, with its cursor, phase and count,
    except a batch the broker acknowledged just before a kill (its cursor never moved): that
    one's readings all came again in the next batch, which is on record with `resumed_from`.
    The cursor moved exactly with each record: a run resumes from the last cursor on record."""
    again = published_again(batches)
    got = [
        (b["cursor"], b["phase"], len(b["readings"]))
        for n, b in enumerate(batches)
        if n not in again
    ]
    assert [(r.cursor, r.detail["phase"], r.readings) for r in records] == got, "MQTT on record"
    assert {r.detail["delivery"] for r in records} == {"mqtt"}
    resumed = {n for n, r in enumerate(records) if "resumed_from" in r.detail}
    assert 0 in resumed
    for n in resumed:
        before = records[n - 1].cursor if n else start
        assert records[n].detail["resumed_from"] == before, f"record {n} resumed elsewhere"
    repeating = {n + 1 for n in again}  # in the consumer's numbering
    kept = [n for n in range(len(batches)) if n not in again]
    assert {kept.index(n) for n in repeating} <= resumed, "a repeat on record without its mark"
    assert sum(r.readings for r in records) == sum(expected.values())
    print(f"MQTT audit: {len(records)} batches, {len(resumed)} resumed, "
          f"{len(again)} acknowledged by the broker but not on record")  # fmt: skip


def check_sse_audit(records: list[Record], events: list[SseEvent], what: str) -> None:
    """Every event the consumer got was on record before it was sent (the rows may also hold
    an event written just before a kill that never reached the consumer)."""
    got = Counter((e.cursor, len(e.readings)) for e in events)
    on_record = Counter((r.cursor, r.readings) for r in records)
    assert got - on_record == Counter(), f"{what}: events received but not on record"
    assert {r.detail["delivery"] for r in records} == {"sse"}
    extra = on_record - got
    print(f"{what} audit: {len(records)} batches, {sum(extra.values())} not received")


def published_again(batches: list[dict[str, Any]]) -> set[int]:
    """The MQTT batches whose readings all came again in the next one (see check_mqtt)."""
    seen: set[Key] = set()
    again = set()
    for n, batch in enumerate(batches):
        keys = {key(r) for r in batch["readings"]}
        if keys & seen:
            again.add(n - 1)
        seen |= keys
    return again


def _first_copies_of(batches: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    seen: set[Key] = set()
    out = []
    for batch in batches:
        for r in batch:
            if key(r) not in seen:
                seen.add(key(r))
                out.append(r)
    return out
