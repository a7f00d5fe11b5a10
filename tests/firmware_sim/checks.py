"""Test helpers: small scenarios, a payload reader, a catalog checker, a subscriber."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from devices.catalog import DEVICE_TYPES, Kind
from firmware_sim import Scenario, parse_scenario

Metrics = dict[str, Any]


def small_city(
    *,
    slug: str = "testville",
    devices: str = "devices.mobility = { traffic_light = 4 }",
    intervals: str = "",
    faults: str = "",
    seed: int = 7,
) -> Scenario:
    """One district of a Grenoble-like city with the devices given as TOML lines."""
    return parse_scenario(
        f"""
seed = {seed}
installed_between = [2023-01-01, 2024-01-01]
[city]
name = "Testville"
slug = "{slug}"
lat = 45.188
lon = 5.724
timezone = "Europe/Paris"
[intervals]
{intervals}
[faults]
{faults}
[[districts]]
name = "centre"
bbox = [45.184, 5.715, 45.196, 5.737]
traffic_factor = 1.2
{devices}
"""
    )


def decode(payload: bytes) -> tuple[datetime, Metrics]:
    """(timestamp, metrics) of a JSON envelope or a SenML pack; raises ValueError when broken."""
    doc = json.loads(payload)
    if isinstance(doc, dict):
        ts = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00"))
        metrics = doc["metrics"]
        if not isinstance(metrics, dict):
            raise TypeError("metrics is not an object")
        return ts, metrics
    if isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc):
        base_time = doc[0]["bt"]
        out: Metrics = {}
        for rec in doc:
            name = (rec.get("bn", "") + rec["n"]).rsplit(":", 1)[-1]
            (value,) = [rec[k] for k in ("v", "vb", "vs") if k in rec]
            out[name] = value
        return datetime.fromtimestamp(base_time, UTC), out
    raise ValueError("not a JSON object or SenML array")


def catalog_problems(device_type: str, metrics: Metrics) -> list[str]:
    """Why these metrics would be rejected under the device catalog v1 (empty: valid)."""
    dtype = DEVICE_TYPES[device_type]
    if not metrics:
        return ["no metrics"]
    problems = []
    for name, value in metrics.items():
        spec = dtype.metric(name)
        if spec is None:
            problems.append(f"unknown metric {name}")
            continue
        if spec.kind is Kind.BOOL:
            if not isinstance(value, bool):
                problems.append(f"{name}={value!r} is not a boolean")
            continue
        if spec.kind is Kind.ENUM and isinstance(value, str):
            if value not in spec.codes:
                problems.append(f"{name}={value!r} is not a known name")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name}={value!r} is not a number")
            continue
        if not math.isfinite(value) or not spec.minimum <= value <= spec.maximum:
            problems.append(f"{name}={value!r} outside [{spec.minimum}, {spec.maximum}]")
        elif spec.kind in (Kind.WHOLE, Kind.ENUM) and float(value) != int(value):
            problems.append(f"{name}={value!r} is not whole")
        elif spec.kind is Kind.ENUM and int(value) not in spec.codes.values():
            problems.append(f"{name}={value!r} is not a known code")
    return problems


class Subscriber:
    """A paho subscriber on `devices/#` that records what the devices of one city send."""

    def __init__(self, url: str, client_id: str, prefix: str, *, persistent: bool = False) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - only broker tests need paho
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        from firmware_sim import parse_broker_url  # noqa: PLC0415

        self.prefix = f"devices/{prefix}"
        self.received: list[tuple[str, bytes, float]] = []
        self.subscribed = threading.Event()
        broker = parse_broker_url(url)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not persistent,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe("devices/#", qos=1)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        if message.topic.startswith(self.prefix):
            self.received.append((message.topic, message.payload, time.time()))

    def wait_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def payloads(self, channel: str) -> list[tuple[str, bytes]]:
        return [(t, p) for t, p, _ in list(self.received) if t.endswith("/" + channel)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
