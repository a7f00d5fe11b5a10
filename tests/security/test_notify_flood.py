"""Attack 2: any database login (here a Grafana datasource's role) sending NOTIFY on the
platform's channels, to make broker-sync rewrite its files and reload Mosquitto, or to make
the streams hubs poll, without end. A notification is a hint: nothing moves unless the data did.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from devices.registry import new_record
from silobreak.broker_sync import SyncResult, watch
from store.lifecycle import register_devices
from store.principals import add_principal
from streams import grants
from streams.cursor import Live
from streams.live import Feed, Hub
from streams.pool import new_pool
from streams.scope import narrow
from tests.e2e.secure_broker import ACTOR, SecureCity, start_secure_city
from tests.security.conftest import grafana_url
from tests.streams.conftest import Town, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.security]

FORGED = 10


@pytest.fixture
def city(service_dir: Path, db_url: str) -> Iterator[SecureCity]:
    c = start_secure_city(service_dir, db_url)
    try:
        yield c
    finally:
        c.broker.stop()


def reloads(city: SecureCity) -> int:
    return (city.broker.cfg.directory / "mosquitto.log").read_text().count("Reloading config")


def inodes(city: SecureCity) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in city.files.all_files()}


def test_a_grafana_login_cannot_make_broker_sync_rewrite_or_reload(
    city: SecureCity, device_prefix: str
) -> None:
    with psycopg.connect(city.db_url, autocommit=True) as conn:
        add_principal(conn, "environment", "service", actor=ACTOR)
    grafana = grafana_url(city.db_url, "environment")
    wakes: list[SyncResult | None] = []
    stop = threading.Event()
    before = reloads(city)
    watcher = threading.Thread(
        target=watch, args=(city.db_url, city.files),
        kwargs={"interval": 3600.0, "stop": stop.is_set, "on_wake": wakes.append},
        daemon=True,
    )  # fmt: skip
    watcher.start()
    try:
        wait_until(lambda: reloads(city) > before, 20, "the watcher's first sync")
        files, reloaded = inodes(city), reloads(city)
        with psycopg.connect(grafana, autocommit=True) as attacker:
            for _ in range(FORGED):
                attacker.execute("SELECT pg_notify('silobreak_broker_auth', '')")
                attacker.execute("SELECT pg_notify('silobreak_registry', 'x')")
        wait_until(lambda: len(wakes) >= 1, 20, "the watcher to look")
        assert wakes == [None] * len(wakes)  # looked at the versions; did nothing
        assert inodes(city) == files  # no file rewritten
        assert reloads(city) == reloaded  # no SIGHUP

        # A real change still reaches the broker.
        lamp = f"{device_prefix}lamp"
        with psycopg.connect(city.db_url, autocommit=True) as conn:
            register_devices(conn, [new_record(lamp, "streetlight")], actor=ACTOR)
        wait_until(lambda: any(w is not None and w.changed for w in wakes), 20, "the sync")
        wait_until(lambda: reloads(city) == reloaded + 1, 20, "the reload")
        devices_file = city.files.listener("devices")[0]
        assert any(line.startswith(f"{lamp}:") for line in devices_file.read_text().splitlines())
    finally:
        stop.set()
        with psycopg.connect(city.db_url, autocommit=True) as conn:
            conn.execute("SELECT pg_notify('silobreak_registry', '')")  # wakes it to stop
        watcher.join(30)
    assert not watcher.is_alive()


def test_a_grafana_login_cannot_make_the_streams_hub_tick(town: Town) -> None:
    lamp = f"{town.prefix}lamp-n1"
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"])  # fmt: skip
    grafana = grafana_url(town.db_url, "environment")
    town.write("streetlight", [(datetime.now(UTC) - timedelta(minutes=1), lamp, 1, 50.0, 1.0)])
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        row = conn.execute("SELECT max(batch) FROM readings_streetlight").fetchone()
    assert row is not None
    old_batch = str(row[0])  # a real transaction's id, already seen by the hub
    payloads = ["", "x", "1", old_batch, str(2**70), "99999999999", "-1", f"{old_batch} "]

    async def go() -> tuple[int, int, float]:
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
        try:
            for _ in range(200):
                if hub.listening and feed.attached:
                    break
                await asyncio.sleep(0.05)
            assert hub.listening and feed.attached
            await hub.next_tick()  # the join's tick is done
            ticks, heard = hub.ticks, hub.notifications
            async with await psycopg.AsyncConnection.connect(grafana, autocommit=True) as a:
                for _ in range(FORGED):
                    for payload in payloads:
                        await a.execute("SELECT pg_notify('silobreak_readings', %s)", (payload,))
            sent = FORGED * len(payloads)
            for _ in range(400):
                if hub.notifications >= heard + sent and not hub._hinted.is_set():
                    break
                await asyncio.sleep(0.05)
            assert hub.notifications >= heard + sent
            forged_ticks = hub.ticks - ticks
            started = asyncio.get_running_loop().time()
            await asyncio.to_thread(
                town.write, "streetlight", [(datetime.now(UTC), lamp, 1, 50.0, 2.0)]
            )
            async with asyncio.timeout(10):
                assert await got.get() == 2.0
            return forged_ticks, hub.hints_ignored, asyncio.get_running_loop().time() - started
        finally:
            stop.set()
            consumer.cancel()
            await asyncio.gather(running, consumer, return_exceptions=True)
            await pool.close()

    forged_ticks, ignored, waited = asyncio.run(go())
    assert forged_ticks == 0
    assert ignored > 0
    assert waited < 5.0  # a genuine commit still wakes it at once (the poll is 30 s)
