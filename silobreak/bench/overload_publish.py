"""The load publisher of `silobreak bench overload`, one process each: pre-encoded QoS 1
air-sensor telemetry as fast as the broker acknowledges it, for a given time.

`python -m silobreak.bench.overload_publish URL --seconds S --index I --publishers P --base-ms T`
prints one JSON line: how many it published, how many the broker acknowledged, how many of
those it routed to no subscriber (PUBACK 0x10), and when it started and finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, Final

from mqtt import MqttPublisher

# Devices are `{PREFIX}00000` ... as `silobreak bench overload` registers them.
PREFIX: Final = "overload-air-"
# Publishes generated and written per step; big writes keep the publisher cheap per message.
_CHUNK: Final = 2000


async def _publish(args: argparse.Namespace) -> dict[str, Any]:
    pub = MqttPublisher(args.url, client_id=f"overload-pub-{args.index}")
    await pub.start()
    devices = args.devices
    topics = [f"devices/{PREFIX}{d:05d}/telemetry" for d in range(devices)]
    started = time.time()
    end = time.monotonic() + args.seconds
    n = 0
    while time.monotonic() < end:
        chunk = []
        for i in range(n, n + _CHUNK):
            k, d = divmod(i, devices)
            ts = args.base_ms + k * args.publishers + args.index
            body = (
                f'{{"ts":{ts},"metrics":{{"pm25":{5 + i % 30}.5,"pm10":{9 + i % 20}.25,'
                f'"no2":{i % 90}.0,"o3":{60 + i % 15}.75}}}}'
            )
            chunk.append((topics[d], body.encode()))
        await pub.publish_many(chunk)
        n += _CHUNK
    await pub.flush()
    finished = time.time()
    await pub.stop()
    return {
        "published": pub.published,
        "acked": pub.acks_received,
        "unrouted": pub.unrouted,
        "started": started,
        "finished": finished,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--base-ms", type=int, required=True, help="the first ts, epoch ms")
    result = asyncio.run(_publish(parser.parse_args()))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
