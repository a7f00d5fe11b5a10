"""A database that stops answering fails a write within the store deadline, never hangs it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

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
