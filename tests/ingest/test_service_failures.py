"""An ingestor whose write path breaks on a bug stops with the error instead of idling."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from devices.registry import new_record
from ingest.errors import IngestError
from ingest.service import IngestConfig, Ingestor
from silobreak.local import LocalMosquitto
from tests.e2e.harness import messages, publish, register

pytestmark = pytest.mark.integration


def test_a_write_path_bug_stops_the_ingestor_with_its_error(
    mqtt_broker: LocalMosquitto, db_url: str, device_prefix: str
) -> None:
    device = new_record(f"{device_prefix}air", "air_sensor")
    register(db_url, [device])
    config = IngestConfig(
        mqtt_url=mqtt_broker.url,
        database_url=db_url,
        client_id=f"{device_prefix}ingest",
        share_group=f"{device_prefix}group",
        session_expiry=timedelta(0),
    )
    ingestor = Ingestor(config)

    async def broken_write(*_args: Any, **_kwargs: Any) -> Any:
        raise OverflowError("int too big to convert")  # as psycopg's int8 dumper once did

    ingestor._writer.write = broken_write  # type: ignore[method-assign]

    async def go() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(ingestor.run(stop))
        await asyncio.wait_for(ingestor._subscriber.connected.wait(), 30)
        items = [(t, p) for t, p, *_ in messages([device], per_device=3)]
        await asyncio.to_thread(publish, mqtt_broker.url, items, f"{device_prefix}pub")
        with pytest.raises(IngestError, match="ingest-writer stopped: OverflowError"):
            await asyncio.wait_for(running, 30)

    asyncio.run(go())
