"""The simulator benchmark's baseline: a plain aiomqtt fleet, one client and task per device.

What a team writes in an afternoon: asyncio on uvloop, one `aiomqtt.Client` per device (its
own connection and client id), each task publishing a JSON reading at QoS 1 every interval
and awaiting its PUBACK. Payloads are random values, not the simulator's behaviour models,
so the baseline does less work per message than the fleet runner it is compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import aiomqtt

# Connections opened at once: aiomqtt connects in the default executor (a few threads).
_CONNECTING_AT_ONCE: Final = 200


class FleetCounters:
    """Shared by the device tasks: how many are connected, how many messages were acked."""

    def __init__(self) -> None:
        self.connected = 0
        self.acknowledged = 0
        self.failed = 0


async def run_fleet(
    host: str,
    port: int,
    device_ids: Sequence[str],
    *,
    interval: float,
    counters: FleetCounters,
    stop: asyncio.Event,
    seed: int = 0,
) -> None:
    """Run every device until `stop` is set, then cancel them all."""
    # Values and start offsets only, never security: seeded so runs are alike.
    draw = random.Random(seed)  # noqa: S311
    gate = asyncio.Semaphore(_CONNECTING_AT_ONCE)
    tasks = [
        asyncio.create_task(
            _device(host, port, device_id, interval, draw.uniform(0.0, interval), gate, counters)
        )
        for device_id in device_ids
    ]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _device(
    host: str,
    port: int,
    device_id: str,
    interval: float,
    offset: float,
    gate: asyncio.Semaphore,
    counters: FleetCounters,
) -> None:
    client = aiomqtt.Client(
        host, port, identifier=device_id, protocol=aiomqtt.ProtocolVersion.V311, keepalive=60
    )
    async with contextlib.AsyncExitStack() as stack:
        async with gate:
            try:
                await stack.enter_async_context(client)
            except aiomqtt.MqttError:
                counters.failed += 1
                return
        counters.connected += 1
        topic = f"devices/{device_id}/telemetry"
        loop = asyncio.get_running_loop()
        due = loop.time() + offset
        reading = _reading_maker(device_id)
        seq = 0
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            await client.publish(topic, reading(seq), qos=1)
            counters.acknowledged += 1
            seq += 1
            due += interval


def _reading_maker(device_id: str) -> Callable[[int], bytes]:
    draw = random.Random(device_id)  # noqa: S311 - values only

    def reading(seq: int) -> bytes:
        metrics = {
            "pm25": round(draw.gauss(12.0, 3.0), 1),
            "pm10": round(draw.gauss(20.0, 4.0), 1),
            "no2": round(draw.gauss(30.0, 8.0), 1),
            "temperature_c": round(draw.gauss(14.0, 2.0), 1),
        }
        ts = datetime.now(UTC).isoformat(timespec="milliseconds")
        return json.dumps({"ts": ts, "seq": seq, "metrics": metrics}).encode()

    return reading
