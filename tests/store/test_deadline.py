"""A database that stops answering fails a write within the store deadline, never hangs it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest

from store.deadline import connect_kwargs, sever
from store.errors import StoreUnavailable
from store.writer import ReadingsWriter
from tests.faults.checks import via_port
from tests.support.proxy import Proxy

pytestmark = pytest.mark.integration

DEADLINE = timedelta(seconds=2)


def row(device: str, seconds_ago: int) -> tuple[object, ...]:
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds_ago)
    return (ts, device, "environment", 1.0, None, None, None, None, None)


def test_a_write_on_a_silent_link_fails_at_the_deadline_and_the_next_reconnects(
    db_url: str, device_prefix: str
) -> None:
    port = urlsplit(db_url).port
    assert port is not None

    async def go() -> None:
        async with Proxy(port) as link:
            writer = ReadingsWriter(via_port(db_url, link.port), timeout=DEADLINE)
            try:
                await writer.write({"air_sensor": [row(f"{device_prefix}a", 3)]})
                link.blackhole()  # the open connection freezes mid-conversation
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="did not answer within 2 s"):
                    await writer.write({"air_sensor": [row(f"{device_prefix}a", 2)]})
                assert time.monotonic() - started < DEADLINE.total_seconds() + 1.5
                # A new connection is accepted and never answered: connect_timeout ends it.
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await writer.write({"air_sensor": [row(f"{device_prefix}a", 2)]})
                assert time.monotonic() - started < DEADLINE.total_seconds() + 1.5
                link.unblock()
                result = await writer.write({"air_sensor": [row(f"{device_prefix}a", 2)]})
                assert result.stored == 1
            finally:
                await writer.close()

    asyncio.run(go())


def test_a_transaction_frozen_on_a_dead_link_releases_its_locks_within_the_deadline(
    db_url: str, device_prefix: str
) -> None:
    port = urlsplit(db_url).port
    assert port is not None
    device = f"{device_prefix}b"
    first = row(device, 5)

    async def go() -> None:
        async with Proxy(port) as link:
            url = via_port(db_url, link.port)
            writer = ReadingsWriter(url, timeout=DEADLINE)
            await writer.write({"air_sensor": [row(device, 6)]})  # today's partition made
            # A session opened as ingest opens them, whose link dies in mid-transaction: the
            # server keeps its backend, its row lock and its uncommitted key.
            frozen = await psycopg.AsyncConnection.connect(url, **connect_kwargs(url, DEADLINE))
            try:
                await frozen.execute(
                    "INSERT INTO readings_air_sensor (time, device_id, service, pm25)"
                    " VALUES (%s, %s, 'environment', 2.0)",
                    [first[0], device],
                )
                link.blackhole()
                link.unblock()  # the link is back; that one connection stays dead
                started = time.monotonic()
                while True:  # as ingest retries: the first try may wait out the frozen one
                    try:
                        result = await writer.write({"air_sensor": [first]})
                        break
                    except StoreUnavailable:
                        assert time.monotonic() - started < 3 * DEADLINE.total_seconds()
                assert result.stored == 1
                assert time.monotonic() - started < 2 * DEADLINE.total_seconds() + 1.5
            finally:
                await writer.close()
                sever(frozen)
                await frozen.close()

    asyncio.run(go())
    with psycopg.connect(db_url) as conn:
        values = conn.execute(
            "SELECT pm25 FROM readings_air_sensor WHERE device_id = %s", [device]
        ).fetchall()
    assert values == [(1.0,), (1.0,)]  # the frozen insert never committed
