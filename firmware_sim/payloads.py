"""Wire formats a device sends: compact JSON telemetry, SenML arrays, events, status."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

import msgspec

from firmware_sim.faults import MetricValue

_ENCODER: Final = msgspec.json.Encoder()


def iso_ms(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and Z, e.g. 2026-11-26T06:00:00.123Z."""
    seconds, millis = divmod(epoch_ms, 1000)
    tm = time.gmtime(seconds)
    return (
        f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}.{millis:03d}Z"
    )


def telemetry_json(epoch_ms: int, seq: int, metrics: Mapping[str, MetricValue]) -> bytes:
    """`{"ts": ..., "seq": n, "metrics": {...}}` as compact JSON."""
    return _ENCODER.encode({"ts": iso_ms(epoch_ms), "seq": seq, "metrics": metrics})


def telemetry_senml(device_id: str, epoch_ms: int, metrics: Mapping[str, MetricValue]) -> bytes:
    """An RFC 8428 SenML pack: base name `<device_id>:` and base time on the first record."""
    records: list[dict[str, object]] = []
    for name, value in metrics.items():
        record: dict[str, object] = {"n": name}
        if isinstance(value, bool):
            record["vb"] = value
        elif isinstance(value, str):
            record["vs"] = value
        else:
            record["v"] = value
        records.append(record)
    if records:
        records[0] = {"bn": f"{device_id}:", "bt": epoch_ms / 1000.0, **records[0]}
    return _ENCODER.encode(records)


def event(epoch_ms: int, kind: str, detail: Mapping[str, MetricValue]) -> bytes:
    """`{"ts": ..., "kind": ..., "detail": {...}}` for devices/{id}/events."""
    return _ENCODER.encode({"ts": iso_ms(epoch_ms), "kind": kind, "detail": detail})


def status(state: str, epoch_ms: int | None) -> bytes:
    """`{"state": "online"|"offline", "ts": ...}`; without ts the receiver stamps it."""
    if epoch_ms is None:
        return _ENCODER.encode({"state": state})
    return _ENCODER.encode({"state": state, "ts": iso_ms(epoch_ms)})
