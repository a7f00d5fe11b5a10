"""The benchmark's load publisher: a separate process sending pre-encoded QoS 1 telemetry.

`python -m silobreak.bench.publish URL --devices N --messages M [--rate R] [--prefix P]`
prints one JSON line: when it started and finished publishing (epoch seconds) and how many
the broker acknowledged. Payloads are air-sensor messages with 4 metrics; with `--rate` each
message carries its own send time in `ts` (µs precision) so latency can be read from the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from mqtt import MqttPublisher

# Publishes per write while pacing at a fixed rate: 20 writes a second keeps the rate smooth.
_PACE_STEPS_PER_S = 20


def payloads(prefix: str, devices: int, count: int, end: datetime) -> Iterator[tuple[str, bytes]]:
    """`count` messages round-robin over `devices`, one second apart per device, up to `end`."""
    per_device = -(-count // devices)
    for i in range(count):
        k, d = divmod(i, devices)
        ts = end - timedelta(seconds=per_device - k)
        body = (
            f'{{"ts":"{ts.isoformat()}","seq":{k},"metrics":{{"pm25":{5 + i % 30}.5,'
            f'"pm10":{9 + i % 20}.25,"no2":{i % 90}.0,"o3":{60 + i % 15}.75}}}}'
        )
        yield f"devices/{prefix}{d:05d}/telemetry", body.encode()


async def _burst(url: str, items: list[tuple[str, bytes]], client_id: str) -> dict[str, float]:
    pub = MqttPublisher(url, client_id=client_id)
    await pub.start()
    started = time.time()
    await pub.publish_many(items)
    await pub.flush()
    finished = time.time()
    await pub.stop()
    return {"started": started, "finished": finished, "acked": pub.acks_received}


async def _paced(
    url: str, prefix: str, devices: int, count: int, rate: float, client_id: str
) -> dict[str, float]:
    pub = MqttPublisher(url, client_id=client_id)
    await pub.start()
    step = max(1, int(rate / _PACE_STEPS_PER_S))
    started = time.time()
    t0 = time.monotonic()
    sent = 0
    while sent < count:
        now = datetime.now(UTC)
        chunk = []
        for i in range(sent, min(count, sent + step)):
            body = (
                f'{{"ts":"{now.isoformat()}","metrics":{{"pm25":{5 + i % 30}.5,'
                f'"pm10":9.25,"no2":{i % 90}.0,"o3":60.75}}}}'
            )
            chunk.append((f"devices/{prefix}{i % devices:05d}/telemetry", body.encode()))
        await pub.publish_many(chunk)
        sent += len(chunk)
        ahead = sent / rate - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await pub.flush()
    finished = time.time()
    await pub.stop()
    return {"started": started, "finished": finished, "acked": pub.acks_received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="messages/s; 0 = as fast as possible"
    )
    parser.add_argument("--prefix", default="bench-air-")
    parser.add_argument("--client-id", default="bench-publisher")
    args = parser.parse_args()
    if args.rate > 0:
        result = asyncio.run(
            _paced(args.url, args.prefix, args.devices, args.messages, args.rate, args.client_id)
        )
    else:
        end = datetime.now(UTC)
        items = list(payloads(args.prefix, args.devices, args.messages, end))
        result = asyncio.run(_burst(args.url, items, args.client_id))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
