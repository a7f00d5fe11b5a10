"""A database that stops answering fails a write within the store deadline, never hangs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from store.deadline import Session, connect_kwargs, end_session, session_of, sever
from store.errors import StoreUnavailable
from store.schema import ReadingsTable
from store.writer import ReadingsWriter, Row
from tests.faults.checks import via_port
from tests.support.proxy import Proxy

pytestmark = pytest.mark.integration

DEADLINE = timedelta(seconds=2)
# A call that would hang never ends; one the deadline ends does within this, however busy
# the machine (the deadline's own timing is measured by the fault benchmarks, not here).
GENEROUS_S = 5 * DEADLINE.total_seconds()


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
                assert time.monotonic() - started < GENEROUS_S
                # A new connection is accepted and never answered: connect_timeout ends it.
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await writer.write({"air_sensor": [row(f"{device_prefix}a", 2)]})
                assert time.monotonic() - started < GENEROUS_S
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
                        assert time.monotonic() - started < 2 * GENEROUS_S
                assert result.stored == 1
                assert time.monotonic() - started < 2 * GENEROUS_S
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


class _DiesInCopy(ReadingsWriter):
    """A writer whose link dies while the server is inside a COPY of its batch: after the
    batch's first rows are in (uncommitted, their keys locked), the next COPY starts and the
    link drops every packet from then on."""

    link: Proxy | None = None

    async def _write_rows(
        self, conn: psycopg.AsyncConnection[Any], table: ReadingsTable, rows: Sequence[Row]
    ) -> tuple[int, int]:
        written = await super()._write_rows(conn, table, rows)
        link, self.link = self.link, None
        if link is not None:
            columns = "time, device_id, service, pm25"
            async with conn.cursor().copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy:
                link.blackhole()  # the server waits for the rest of the COPY
                ts = datetime.now(UTC).isoformat()
                chunk = f"{ts}\t{rows[0][1]}-more\tenvironment\t1\n".encode() * 20_000
                while True:  # until the deadline severs the link
                    await copy.write(chunk)
        return written


def test_a_batch_cut_off_inside_a_copy_is_ended_on_the_server_when_the_writer_reconnects(
    db_url: str, device_prefix: str
) -> None:
    """A backend waiting for COPY data heeds no statement timeout: until the writer ends it,
    the retry of the same batch would wait on the keys it holds, one deadline after another."""
    port = urlsplit(db_url).port
    assert port is not None
    device = f"{device_prefix}c"
    batch = {"air_sensor": [row(device, 5), row(device, 4)]}

    async def go() -> tuple[int, int]:
        async with Proxy(port) as link:
            writer = _DiesInCopy(via_port(db_url, link.port), timeout=DEADLINE)
            try:
                await writer.write({"air_sensor": [row(device, 6)]})  # today's partition made
                assert writer._session is not None
                cut_off = writer._session.pid
                writer.link = link
                with pytest.raises(StoreUnavailable, match="did not answer within 2 s"):
                    await writer.write(batch)
                link.unblock()  # the link is back; the cut-off session is still on the server
                attempts = 0
                while True:
                    attempts += 1
                    try:
                        result = await writer.write(batch)
                        break
                    except StoreUnavailable:
                        # Without ending it, every retry waits out its deadline on the keys.
                        assert attempts < 3, "the retry still waits on the cut-off session"
                assert result.stored == 2
                return cut_off, attempts
            finally:
                await writer.close()

    cut_off, attempts = asyncio.run(go())
    assert attempts == 1
    with psycopg.connect(db_url) as conn:
        alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [cut_off])
        assert alive.fetchone() == (0,)
        stored = conn.execute(
            "SELECT device_id, count(*) FROM readings_air_sensor WHERE device_id LIKE %s"
            " GROUP BY device_id ORDER BY 1",
            [f"{device}%"],
        ).fetchall()
    assert stored == [(device, 3)]  # nothing of the cut-off COPY was committed


def test_a_session_of_another_server_is_not_ended_where_its_pid_is_someone_elses(
    db_url: str,
) -> None:
    """After a failover the writer's next connect reaches another server: the pid of the
    session it gave up on may be a live session there, which must be left alone."""

    async def go() -> tuple[bool, bool]:
        bystander = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
        other = await psycopg.AsyncConnection.connect(db_url, autocommit=True)
        try:
            here = await session_of(bystander)
            assert here is not None
            # The same pid and backend start, as if on a server started at another time.
            elsewhere = Session(here.pid, here.started, here.server_started - timedelta(hours=1))
            ended_elsewhere = await end_session(other, elsewhere)
            await bystander.execute("SELECT 1")  # still there
            ended_here = await end_session(other, here)
            return ended_elsewhere, ended_here
        finally:
            await bystander.close()
            await other.close()

    assert asyncio.run(go()) == (False, True)
