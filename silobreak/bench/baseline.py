"""The hand-rolled baseline ingestor the benchmark measures silobreak against.

What a team writes in an afternoon: one paho subscriber, `json.loads`, no validation, narrow
rows (one per metric) COPYed every 5,000 rows or 200 ms, acknowledged after commit so the
comparison is like for like. Run as `python -m silobreak.bench.baseline MQTT_URL DB_URL`.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, Final

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt import MqttUrl

FLUSH_ROWS: Final = 5000
FLUSH_SECONDS: Final = 0.2
TABLE_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS baseline_readings (time timestamptz NOT NULL,"
    " device_id text NOT NULL, metric text NOT NULL, value double precision,"
    " UNIQUE (device_id, metric, time))"
)


def main(mqtt_url: str, db_url: str, client_id: str) -> None:
    url = MqttUrl.parse(mqtt_url)
    inbox: queue.Queue[tuple[int, bytes, bytes]] = queue.Queue(maxsize=50_000)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=True,
    )

    def on_connect(c: mqtt.Client, *_: Any) -> None:
        c.subscribe("$share/baseline/devices/+/telemetry", qos=1)
        print("subscribed", file=sys.stderr, flush=True)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        inbox.put((msg.mid, msg.topic.encode(), bytes(msg.payload)))

    client.on_connect = on_connect
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0  # like the bench's ingestors: no session left behind
    props.ReceiveMaximum = 20_000
    if url.username is not None:
        client.username_pw_set(url.username, url.password)
    client.connect(url.host, url.port, clean_start=False, properties=props)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client.loop_start()
    with psycopg.connect(db_url) as conn:
        conn.execute(TABLE_DDL)
        conn.commit()
        _consume(client, conn, inbox, stop)
    client.loop_stop()


def _consume(
    client: mqtt.Client,
    conn: psycopg.Connection[Any],
    inbox: queue.Queue[tuple[int, bytes, bytes]],
    stop: threading.Event,
) -> None:
    rows: list[tuple[Any, ...]] = []
    mids: list[int] = []
    deadline = time.monotonic() + FLUSH_SECONDS
    while not stop.is_set():
        try:
            mid, topic, payload = inbox.get(timeout=0.05)
            doc = json.loads(payload)
            device = topic.split(b"/")[1].decode()
            ts = datetime.fromisoformat(doc["ts"]) if "ts" in doc else datetime.now(UTC)
            rows.extend((ts, device, k, float(v)) for k, v in doc["metrics"].items())
            mids.append(mid)
        except queue.Empty:
            pass
        if len(rows) >= FLUSH_ROWS or (rows and time.monotonic() >= deadline):
            with conn.cursor().copy(
                "COPY baseline_readings (time, device_id, metric, value) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.commit()
            for mid in mids:
                client.ack(mid, 1)
            rows.clear()
            mids.clear()
            deadline = time.monotonic() + FLUSH_SECONDS


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "baseline-1")
