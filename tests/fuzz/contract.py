"""What the decoder and the topic parsers promise for any input: checked by both fuzzers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Final

from devices.catalog import DEVICE_TYPES, Kind
from devices.registry import KnownDevice, RegistrySnapshot
from devices.topics import CHANNELS, DEVICE_ID_RE, parse_device_topic
from ingest.decode import (
    DECODE_REASONS,
    PAYLOAD_TOO_LARGE,
    Accepted,
    Rejected,
    Window,
    decode,
    device_id_of,
)

NOW: Final = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
WINDOW: Final = Window.at(NOW, max_age=timedelta(days=7), max_future=timedelta(minutes=5))
# One registered device per type; the meter changed owner a day ago.
DEVICES: Final = {name: f"dev-{name}" for name in DEVICE_TYPES}
REGISTRY: Final = RegistrySnapshot(
    KnownDevice(
        device_id=device_id,
        device_type=DEVICE_TYPES[name],
        owners=((NOW - timedelta(days=400), "first"), (NOW - timedelta(days=1), "second")),
        medium="water" if name == "meter" else None,
    )
    for name, device_id in DEVICES.items()
)
TOPICS: Final = (
    *(f"devices/{d}/telemetry" for d in DEVICES.values()),
    "devices/ghost/telemetry",
    "devices//telemetry",
    "devices/a/b/telemetry",
    "devices/dev-meter/status",
    "",
)
INT8: Final = (-(2**63), 2**63 - 1)


def check_decode(topic: str, payload: bytes, *, max_payload: int) -> Accepted | Rejected:
    """Decode, and fail (AssertionError) unless the outcome keeps the contract."""
    result = decode(topic, payload, REGISTRY, WINDOW, max_payload=max_payload)
    if isinstance(result, Rejected):
        assert result.reason in DECODE_REASONS, result
        assert isinstance(result.detail, str)
        if len(payload) > max_payload:
            assert result.reason == PAYLOAD_TOO_LARGE
        return result
    assert isinstance(result, Accepted), result
    assert len(payload) <= max_payload
    device_id = device_id_of(topic)
    device = REGISTRY.get(device_id) if device_id is not None else None
    assert device is not None, topic
    assert result.device_type == device.device_type.name
    assert result.rows
    for row in result.rows:
        _check_row(row, device)
    return result


def _check_row(row: tuple[object, ...], device: KnownDevice) -> None:
    """A row the store can hold: a time in the window, the owner then, values in range."""
    specs = device.device_type.metrics
    assert len(row) == 3 + len(specs)
    time, device_id, service = row[:3]
    assert isinstance(time, datetime)
    assert time.tzinfo is not None
    assert WINDOW.earliest <= time <= WINDOW.latest
    assert device_id == device.device_id
    assert service == device.service_at(time)
    values = row[3:]
    assert any(v is not None for v in values), row
    for spec, value in zip(specs, values, strict=True):
        if value is None:
            continue
        if spec.kind is Kind.NUMBER:
            assert type(value) is float
            assert math.isfinite(value)
        else:
            assert type(value) is int
            assert INT8[0] <= value <= INT8[1]
        assert spec.minimum <= value <= spec.maximum, (spec.name, value)


def check_topic(topic: str) -> None:
    """The topic parsers return None or exactly the parts the topic is made of."""
    device_id = device_id_of(topic)
    if device_id is not None:
        assert device_id
        assert "/" not in device_id
        assert topic == f"devices/{device_id}/telemetry"
    parsed = parse_device_topic(topic)
    if parsed is not None:
        assert DEVICE_ID_RE.fullmatch(parsed[0]) is not None
        assert parsed[1] in CHANNELS
        assert topic == f"devices/{parsed[0]}/{parsed[1]}"
        if parsed[1] == "telemetry":
            assert device_id == parsed[0]
