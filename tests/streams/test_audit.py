"""Delivery batches on record: a webhook batch resent after a restart, and SSE's recorder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, LiteralString

import psycopg
import pytest

from retries import Policy
from silobreak.local import free_port
from streams import audit, cursor, webhooks
from streams.gateway import Gateway, StreamsConfig, encode_batch
from streams.live import Batch
from tests.streams.conftest import wait_until
from tests.support.http import serving

pytestmark = pytest.mark.integration

SUB = "s00000000000000aa"
SECRET = "a-secret"


class Receiver(ThreadingHTTPServer):
    """Answers 204 to every POST and keeps (idempotency key, body)."""

    def __init__(self, port: int) -> None:
        self.posts: list[tuple[str, bytes]] = []
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert webhooks.verify(SECRET, self.headers, body)
        self.server.posts.append((self.headers[webhooks.IDEMPOTENCY_HEADER], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving(Receiver(free_port())) as server:
        yield server


def left_pending(db_url: str, url: str, *, grant_status: str = "active") -> tuple[str, bytes]:
    """The store as a gateway killed mid-delivery leaves it: a webhook subscription whose
    batch 1 is written (and maybe POSTed) but not acknowledged. Returns its cursor and body."""
    readings = [
        {"time": "2026-11-26T10:00:00+00:00", "device_id": "tl-1", "device_type": "traffic_light",
         "service": "mobility", "district": "north", "metric": "vehicle_count", "value": 3.0},
        {"time": "2026-11-26T10:00:01+00:00", "device_id": "tl-1", "device_type": "traffic_light",
         "service": "mobility", "district": "north", "metric": "vehicle_count", "value": 4.0},
    ]  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as conn:
        start = cursor.encode(cursor.Live(_snapshot(conn)))
        grant_id = _scalar(
            conn,
            "INSERT INTO grants (owner, consumer, device_types, metrics, districts, granularity,"
            " purpose, expires_at, status, created_by) VALUES ('mobility', 'planning',"
            " '{traffic_light}', '{vehicle_count}', '{north}', 'raw', 'study', %s, %s,"
            " 'mobility') RETURNING id",
            (datetime.now(UTC) + timedelta(days=1), grant_status),
        )
        after = cursor.encode(cursor.Live(_snapshot(conn)))  # past the grant's transaction
        assert after != start
        conn.execute(
            "INSERT INTO subscriptions (id, consumer, grant_id, device_types, metrics,"
            " delivery, webhook_url, secret, cursor) VALUES (%s, 'planning', %s, '{}', '{}',"
            " 'webhook', %s, %s, %s)",
            (SUB, grant_id, url, SECRET, start),
        )
        body = encode_batch(SUB, Batch(readings, after, "live"), {})
        conn.execute(
            "INSERT INTO webhook_deliveries (subscription_id, seq, idempotency_key, cursor_to,"
            " readings, body) VALUES (%s, 1, %s, %s, 2, %s)",
            (SUB, f"{SUB}-1", after, body),
        )
    return after, body


def run_gateway(db_url: str, hook_prefix: str, until: Callable[[], bool]) -> None:
    """A gateway started on the store as it is, stopped once `until()` holds."""
    config = StreamsConfig(
        database_url=db_url,
        poll_interval=timedelta(milliseconds=100),
        webhook_allow=(hook_prefix,),
        webhook_retry=Policy(first=0.05, cap=0.2, give_up=timedelta(days=1).total_seconds()),
    )

    async def go() -> None:
        gateway = Gateway(config)
        await gateway.start()
        try:
            await asyncio.to_thread(wait_until, until, 15.0, "the gateway's work")
        finally:
            await gateway.stop()

    asyncio.run(go())


def test_a_webhook_batch_resent_after_a_restart_is_on_record_as_a_redelivery(
    db_url: str, receiver: Receiver
) -> None:
    prefix = f"http://127.0.0.1:{receiver.server_port}/hooks/"
    after, body = left_pending(db_url, prefix + "planning")

    def delivered() -> bool:
        with psycopg.connect(db_url) as conn:
            at = _scalar(conn, "SELECT cursor FROM subscriptions WHERE id = %s", (SUB,))
            return bool(at == after)

    run_gateway(db_url, prefix, delivered)
    assert receiver.posts == [(f"{SUB}-1", body)]  # the same batch under the same key
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT actor, owner, consumer, subscription_id, readings, detail FROM audit_log"
            " WHERE action = 'delivery.batch'"
        ).fetchall()
        status = _scalar(conn, "SELECT status FROM webhook_deliveries WHERE subscription_id = %s",
                         (SUB,))  # fmt: skip
    assert status == "delivered"
    assert rows == [
        ("streams", "mobility", "planning", SUB, 2,
         {"delivery": "webhook", "phase": "live", "cursor": after, "key": f"{SUB}-1",
          "attempts": 1, "redelivery": True}),
    ]  # fmt: skip


def test_a_pending_batch_of_a_grant_revoked_meanwhile_is_not_sent_and_the_stop_on_record(
    db_url: str, receiver: Receiver
) -> None:
    prefix = f"http://127.0.0.1:{receiver.server_port}/hooks/"
    left_pending(db_url, prefix + "planning", grant_status="revoked")

    def stopped() -> bool:
        with psycopg.connect(db_url) as conn:
            status = _scalar(conn, "SELECT status FROM subscriptions WHERE id = %s", (SUB,))
            return bool(status != "active")

    run_gateway(db_url, prefix, stopped)
    assert receiver.posts == []
    with psycopg.connect(db_url) as conn:
        actions = conn.execute("SELECT action, detail FROM audit_log ORDER BY id").fetchall()
        note = _scalar(conn, "SELECT note FROM subscriptions WHERE id = %s", (SUB,))
    assert note == "grant_revoked"
    assert actions == [("subscription.stop", {"reason": "grant_revoked"})]


def test_the_recorder_writes_before_it_answers_and_leaves_out_who_gave_up(db_url: str) -> None:
    async def go() -> list[tuple[str, int]]:
        recorder = audit.Recorder(db_url)
        task = asyncio.create_task(recorder.run())
        events = [audit.Event("streams", "delivery.batch", "mobility", "planning", 1, SUB, n)
                  for n in range(5)]  # fmt: skip
        futures = [recorder.write(e) for e in events]
        futures[2].cancel()  # its consumer went away before its turn
        await asyncio.gather(*futures[:2], *futures[3:])
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            cur = await conn.execute("SELECT action, readings FROM audit_log ORDER BY id")
            written = await cur.fetchall()
        recorder.close()
        await task
        late = recorder.write(events[0])
        with pytest.raises(audit.RecorderClosed):
            await late
        return written

    assert asyncio.run(go()) == [("delivery.batch", n) for n in (0, 1, 3, 4)]


def test_while_the_store_is_away_the_recorder_keeps_callers_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unreachable = f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1"

    async def go() -> None:
        recorder = audit.Recorder(unreachable, retry_s=0.1)
        task = asyncio.create_task(recorder.run())
        future = recorder.write(audit.Event("streams", "delivery.batch", readings=3))
        tried_twice = lambda: caplog.text.count("store unavailable") >= 2  # noqa: E731
        await asyncio.to_thread(wait_until, tried_twice, 60, "two failed tries at the store")
        assert not future.done()  # not sent: nothing goes out unrecorded
        recorder.close()
        await task
        with pytest.raises(audit.RecorderClosed):
            future.result()

    asyncio.run(go())
    assert "store unavailable; 1 batch(es) wait" in caplog.text


def _snapshot(conn: psycopg.Connection[Any]) -> str:
    return str(_scalar(conn, "SELECT pg_current_snapshot()::text"))


def _scalar(conn: psycopg.Connection[Any], query: LiteralString, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]
