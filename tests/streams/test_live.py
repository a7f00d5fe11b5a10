"""Live delivery by SSE through the client: grants, revocation, expiry, replay-then-live, resume."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from streams import grants, live
from streams.client import ClientError, StreamsClient, SubscriptionEnded
from streams.cursor import Live, Replay
from streams.live import Batch, Feed, Hub
from streams.pool import Pool, new_pool
from streams.scope import narrow
from tests.streams.conftest import Town, wait_until

pytestmark = pytest.mark.integration


def now() -> datetime:
    return datetime.now(UTC)


async def read_until(
    client: StreamsClient, sub_id: str, done: Callable[[list[dict[str, Any]]], bool],
    seconds: float = 15.0,
) -> list[dict[str, Any]]:  # fmt: skip
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds):
        async for event in client.events(sub_id):
            got += event.readings
            if done(got):
                return got
    return got


async def eventually(check: Callable[[], bool], seconds: float) -> None:
    """Wait until `check()` holds, looking every 10 ms, for at most `seconds`."""
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - a flag of the object under test, not an event
            await asyncio.sleep(0.01)


def has(device: str, value: float) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda got: any(r["device_id"] == device and r["value"] == value for r in got)


def test_live_delivers_exactly_the_granted_slice_and_nothing_without_a_grant(town: Town) -> None:
    p = town.prefix
    g = town.grant("mobility", consumer="environment", device_types=["traffic_light"],
                   metrics=["vehicle_count"], districts=["north"])  # fmt: skip

    async def go() -> list[dict[str, Any]]:
        async with StreamsClient(town.base, town.tokens["planning"]) as stranger:
            with pytest.raises(ClientError) as refused:
                await stranger.create_subscription(grant_id=g["id"], delivery="sse")
            assert (refused.value.status, refused.value.reason) == (403, "not_grantee")
        async with StreamsClient(town.base, town.tokens["environment"]) as client:
            with pytest.raises(ClientError) as outside:
                await client.create_subscription(grant_id=g["id"], delivery="sse",
                                                 districts=["south"])  # fmt: skip
            assert outside.value.reason == "district_not_granted"
            sub = await client.create_subscription(grant_id=g["id"], delivery="sse")
            t = now()
            await asyncio.to_thread(town.write, "traffic_light", [
                (t, f"{p}tl-n1", 2, 7), (t, f"{p}tl-s1", 2, 8)])  # fmt: skip
            await asyncio.to_thread(town.write, "streetlight", [(t, f"{p}lamp-n1", 1, 10.0, 9.0)])
            # Committed last: once it arrives, anything before it would have too.
            await asyncio.to_thread(town.write, "traffic_light", [(now(), f"{p}tl-n1", 1, 99)])
            return await read_until(client, sub["id"], has(f"{p}tl-n1", 99.0))

    got = asyncio.run(go())
    assert [(r["device_id"], r["metric"], r["value"], r["district"]) for r in got] == [
        (f"{p}tl-n1", "vehicle_count", 7.0, "north"),
        (f"{p}tl-n1", "vehicle_count", 99.0, "north"),
    ]
    assert set(got[0]) == {"time", "device_id", "device_type", "service", "district", "metric",
                           "value"}  # fmt: skip


def test_revocation_stops_live_within_2s_and_refuses_history_at_once(town: Town) -> None:
    p = town.prefix
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"])  # fmt: skip
    ended: dict[str, Any] = {}

    async def go() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            sub = await client.create_subscription(grant_id=g["id"], delivery="sse")
            await asyncio.to_thread(
                town.write, "streetlight", [(now(), f"{p}lamp-n1", 1, 5.0, 1.0)]
            )
            try:
                async with asyncio.timeout(15):
                    async for event in client.events(sub["id"]):
                        got += event.readings
                        if "revoked_at" not in ended:
                            await asyncio.to_thread(revoke_and_keep_writing)
            except SubscriptionEnded as exc:
                ended["reason"] = exc.reason
                ended["at"] = time.monotonic()
        return got

    def revoke_and_keep_writing() -> None:
        with town.http("lighting") as h:
            assert h.post(f"/v1/grants/{g['id']}/revoke", json={"note": "study over"}).is_success
        ended["revoked_at"] = time.monotonic()
        with town.http("planning") as h:
            r = h.get("/v1/history", params={"start": (now() - timedelta(hours=1)).isoformat()})
            assert (r.status_code, r.json()["reason"]) == (403, "no_grant")
            r = h.get(
                "/v1/history",
                params={"grant_id": g["id"], "start": (now() - timedelta(hours=1)).isoformat()},
            )
            assert (r.status_code, r.json()["reason"]) == (403, "grant_revoked")
        town.write("streetlight", [(now(), f"{p}lamp-n1", 1, 5.0, 2.0)])

    got = asyncio.run(go())
    assert [r["value"] for r in got] == [1.0]
    assert ended["reason"] == "grant_revoked"
    assert ended["at"] - ended["revoked_at"] < 2.0
    with town.http("lighting") as h:
        wait_until(
            lambda: (
                "subscription.stop" in [e["action"] for e in h.get("/v1/audit").json()["entries"]]
            ),
            what="the stop on record",
        )
        actions = [
            e["action"] for e in h.get("/v1/audit", params={"grant_id": g["id"]}).json()["entries"]
        ]
    assert {"grant.revoke", "history.refused", "subscription.stop", "delivery.batch"} <= set(
        actions
    )


def test_expiry_stops_live_and_history_without_anyone_acting(town: Town) -> None:
    p = town.prefix
    expires = now() + timedelta(seconds=2)
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   expires_at=expires.isoformat())  # fmt: skip

    async def go() -> tuple[list[dict[str, Any]], str, datetime]:
        got: list[dict[str, Any]] = []
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            sub = await client.create_subscription(grant_id=g["id"], delivery="sse")
            await asyncio.to_thread(
                town.write, "streetlight", [(now(), f"{p}lamp-n1", 1, 5.0, 1.0)]
            )
            try:
                async with asyncio.timeout(15):
                    async for event in client.events(sub["id"]):
                        got += event.readings
            except SubscriptionEnded as exc:
                return got, exc.reason, now()
        raise AssertionError("the feed did not end")

    got, reason, ended_at = asyncio.run(go())
    assert reason == "grant_expired"
    assert {r["metric"] for r in got} == {"lamp_on", "dim_level", "power_w"}
    assert ended_at - expires < timedelta(seconds=2)
    with town.http("planning") as h:
        r = h.get(
            "/v1/history",
            params={"grant_id": g["id"], "start": (now() - timedelta(hours=1)).isoformat()},
        )
    assert (r.status_code, r.json()["reason"]) == (403, "grant_expired")
    with town.http("data-office") as h:
        wait_until(
            lambda: h.get("/v1/audit", params={"action": "grant.expire"}).json()["entries"],
            what="the expiry on record",
        )


def test_replay_then_live_yields_every_reading_once_in_order_late_ones_included(
    town: Town,
) -> None:
    p = town.prefix
    lamps = [f"{p}lamp-n1", f"{p}lamp-n2", f"{p}lamp-s1"]
    start = now().replace(microsecond=0)
    since = start - timedelta(hours=1)
    # History: one reading a minute per lamp, and one from before the window (not replayed).
    town.write("streetlight", [(start - timedelta(minutes=m), d, 1, 50.0, float(m))
                               for m in range(1, 61) for d in lamps])  # fmt: skip
    town.write("streetlight", [(since - timedelta(minutes=1), lamps[0], 1, 50.0, -1.0)])
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"])  # fmt: skip
    stop = threading.Event()
    written: list[tuple[datetime, str, float]] = []

    def devices_publish() -> None:
        k = 0
        while not stop.is_set() or k < 40:
            k += 1
            at = now()
            rows = [(at, d, 1, 50.0, 1000.0 + k) for d in lamps]
            # Late: a reading timed 30 minutes back that arrives only now.
            late = (start - timedelta(minutes=30, seconds=k), lamps[k % 3], 1, 50.0, 5000.0 + k)
            town.write("streetlight", [*rows, late])
            written.extend((r[0], r[1], r[4]) for r in [*rows, late])
            time.sleep(0.01)

    async def go() -> list[dict[str, Any]]:
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            writer = threading.Thread(target=devices_publish)
            writer.start()
            await asyncio.sleep(0.2)  # let the devices publish while the subscription opens
            sub = await client.create_subscription(
                grant_id=g["id"], delivery="sse", since=since.isoformat()
            )
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.to_thread(writer.join)
            await asyncio.to_thread(town.write, "streetlight", [(now(), lamps[0], 1, 50.0, -9.0)])
            return await read_until(client, sub["id"], has(lamps[0], -9.0), seconds=30)

    got = asyncio.run(go())
    expected = Counter(
        [(d, float(m)) for m in range(1, 61) for d in lamps]
        + [(d, v) for _, d, v in written]
        + [(lamps[0], -9.0)]
    )
    received = Counter((r["device_id"], r["value"]) for r in got)
    assert received == expected  # every reading of the window, each exactly once
    for lamp in lamps:
        on_time = [r["time"] for r in got if r["device_id"] == lamp and r["value"] < 5000]
        assert on_time == sorted(on_time), f"{lamp} out of order"


def test_an_aggregate_subscription_never_yields_a_raw_reading_live_or_replayed(
    town: Town,
) -> None:
    p = town.prefix
    meters = [f"{p}m-n{i}" for i in range(6)] + [f"{p}m-s{i}" for i in range(2)]
    t0 = now() - timedelta(minutes=10)
    town.write(
        "meter", [(t0 + timedelta(seconds=s), m, 10.0, 1.0) for s in range(3) for m in meters]
    )
    g = town.grant("energy", consumer="planning", device_types=["meter"], granularity="aggregate",
                   interval="1s", pool="district")  # fmt: skip

    async def go() -> list[dict[str, Any]]:
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            sub = await client.create_subscription(
                grant_id=g["id"], delivery="sse", since=(t0 - timedelta(seconds=1)).isoformat()
            )
            live_at = now()
            await asyncio.to_thread(town.write, "meter", [(live_at, m, 20.0, 2.0) for m in meters])
            return await read_until(
                client, sub["id"], lambda got: any(r["sum"] == 6 * 20.0 for r in got), seconds=20
            )

    got = asyncio.run(go())
    assert got
    assert all("value" not in r and r["device_id"] is None for r in got)
    assert not any({"min", "max", "last"} & set(r) for r in got)  # no one's own reading
    assert {r["district"] for r in got} == {"north"}  # south pools 2 meters: below the minimum
    assert {(r["metric"], r["count"], r["devices"]) for r in got} == {("index", 6, 6),
                                                                      ("flow", 6, 6)}  # fmt: skip


def test_a_consumer_that_disconnects_resumes_after_its_acknowledged_position(town: Town) -> None:
    p = town.prefix
    g = town.grant("mobility", consumer="planning", device_types=["traffic_light"],
                   metrics=["vehicle_count"])  # fmt: skip

    async def go() -> tuple[list[float], list[float]]:
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            sub = await client.create_subscription(grant_id=g["id"], delivery="sse")
            await asyncio.to_thread(town.write, "traffic_light", [(now(), f"{p}tl-n1", 2, 1)])
            async for event in client.events(sub["id"], ack=False):
                first = event.readings
                # Processed: acknowledged; the client would have done it on its next read.
                await client.ack(sub["id"], event.cursor)
                break
        # Away: these arrive while nobody listens.
        await asyncio.to_thread(town.write, "traffic_light", [(now(), f"{p}tl-n1", 2, 2)])
        await asyncio.to_thread(town.write, "traffic_light", [(now(), f"{p}tl-s1", 2, 3)])
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            second = await read_until(client, sub["id"], has(f"{p}tl-s1", 3.0))
        return [r["value"] for r in first], [r["value"] for r in second]

    first, second = asyncio.run(go())
    assert first == [1.0]
    assert second == [2.0, 3.0]


def test_a_feed_that_starts_while_the_hub_reads_the_grants_is_not_closed(db_url: str) -> None:
    """A feed watched after a tick read the grants' states (its own grant's not among them) is
    checked at the next tick, not closed for a state the tick never read."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO grants (owner, consumer, device_types, granularity, purpose, expires_at,"
            " status, created_by) VALUES ('mobility', 'planning', '{traffic_light}', 'raw',"
            " 'study', now() + interval '1 day', %s, 'mobility') RETURNING id",
            ("active",),
        ).fetchone()
        snapshot = str(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])  # type: ignore[index]
    assert row is not None

    class Racing(Hub):
        """A feed starts while the tick is at the database, after the grants were read."""

        late: Feed | None = None

        async def _grant_states(self, conn: psycopg.AsyncConnection[Any]) -> dict[int, str]:
            states = await super()._grant_states(conn)
            if self.late is not None:
                self.watch(self.late)
            return states

    async def go() -> list[str | None]:
        # The ticks under test read through `conn`; the pool (feeds' pages) is never opened.
        pool = new_pool(db_url)
        hub = Racing(db_url, pool=pool, poll_interval=timedelta(milliseconds=100), min_pool=5)
        closed = []
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            grant = await grants.get(conn, row[0])
            hub.late = Feed(hub, grant, [narrow(grant, "traffic_light")], Live(snapshot))
            for _ in range(2):  # the tick it starts in, then the one that reads its grant
                await hub._tick(conn)
                closed.append(hub.late.closed)
        return closed

    assert asyncio.run(go()) == [None, None]


def test_a_commit_wakes_the_hub_without_waiting_for_its_poll_even_after_losing_its_listener(
    town: Town,
) -> None:
    """Writers NOTIFY at commit: with a 30 s poll a reading still arrives at once, and again
    after the listening connection was cut (the hub listens anew)."""
    lamp = f"{town.prefix}lamp-n1"
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"])  # fmt: skip

    def listeners() -> list[int]:
        with psycopg.connect(town.db_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = 'silobreak-streams-listen'"
            ).fetchall()
        return [r[0] for r in rows]

    async def go() -> list[float]:
        pool = new_pool(town.db_url)
        await pool.open(wait=True)
        hub = Hub(town.db_url, pool=pool, poll_interval=timedelta(seconds=30), min_pool=5)
        stop = asyncio.Event()
        running = asyncio.create_task(hub.run(stop))
        async with await psycopg.AsyncConnection.connect(town.db_url, autocommit=True) as conn:
            grant = await grants.get(conn, g["id"])
            cur = await conn.execute("SELECT pg_current_snapshot()::text")
            snapshot = str((await cur.fetchone())[0])  # type: ignore[index]
        feed = Feed(hub, grant, [narrow(grant, "streetlight")], Live(snapshot))
        got: asyncio.Queue[float] = asyncio.Queue()

        async def consume() -> None:
            async for batch in feed.batches():
                for r in batch.readings:
                    got.put_nowait(r["value"])

        consumer = asyncio.create_task(consume())
        waited = []
        try:
            await eventually(lambda: hub.listening and feed.attached, 20)
            for value in (1.0, 2.0):
                if value == 2.0:
                    # Cut every listening connection (the town's API server has one too).
                    with psycopg.connect(town.db_url, autocommit=True) as c:
                        for pid in await asyncio.to_thread(listeners):
                            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    await eventually(lambda: not hub.listening, 10)
                    await eventually(lambda: hub.listening, 10)
                await asyncio.sleep(0.5)  # past the tick the (re)connection asked for
                started = time.monotonic()
                await asyncio.to_thread(town.write, "streetlight", [(now(), lamp, 1, 50.0, value)])
                async with asyncio.timeout(10):
                    assert await got.get() == value
                waited.append(time.monotonic() - started)
        finally:
            stop.set()
            consumer.cancel()
            await asyncio.gather(running, consumer, return_exceptions=True)
            await pool.close()
        assert hub.notifications >= 2
        return waited

    waited = asyncio.run(go())
    # A poll would have taken up to 30 s; a notification takes one tick (its latency is
    # measured by `silobreak bench streams`; here only that it is not the poll's).
    assert all(w < 15.0 for w in waited), waited


def test_replay_pages_give_their_pooled_connection_back_before_they_are_delivered(
    town: Town, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool of one connection serves two replaying feeds, one of them stalled after its
    first page: a page holds a pooled connection only for its query."""
    monkeypatch.setattr(live, "REPLAY_PAGE", 10)
    lamp = f"{town.prefix}lamp-n1"
    start = now().replace(microsecond=0)
    since = start - timedelta(hours=1)
    town.write("streetlight", [(start - timedelta(minutes=m), lamp, 1, 50.0, float(m))
                               for m in range(1, 51)])  # fmt: skip
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"])  # fmt: skip

    async def go() -> tuple[int, list[float]]:
        pool: Pool = AsyncConnectionPool(
            town.db_url, min_size=1, max_size=1, timeout=5.0,
            kwargs={"autocommit": True}, open=False,
        )  # fmt: skip
        await pool.open(wait=True)
        hub = Hub(town.db_url, pool=pool, poll_interval=timedelta(seconds=30), min_pool=5)
        async with pool.connection() as conn:
            grant = await grants.get(conn, g["id"])
            cur = await conn.execute("SELECT pg_current_snapshot()::text")
            snapshot = str((await cur.fetchone())[0])  # type: ignore[index]

        def feed() -> AsyncGenerator[Batch, None]:
            replay = Replay(snapshot, since, 0, None, "")
            batches = Feed(hub, grant, [narrow(grant, "streetlight")], replay).batches()
            return cast(AsyncGenerator[Batch, None], batches)

        stalled, reader = feed(), feed()
        try:
            first = await anext(stalled)  # and then never read again
            values: list[float] = []
            async with asyncio.timeout(30):
                async for batch in reader:
                    assert batch.phase == "replay"
                    values += [r["value"] for r in batch.readings]
                    if len(values) == 50:
                        break
            return len(first.readings), values
        finally:
            await stalled.aclose()
            await reader.aclose()
            await pool.close()

    first, values = asyncio.run(go())
    assert first == 10
    assert sorted(values) == [float(m) for m in range(1, 51)]
