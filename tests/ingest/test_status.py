"""Status messages: the newest per device wins; bad ones become rejects with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from devices.catalog import DEVICE_TYPES
from devices.registry import KnownDevice, RegistrySnapshot
from ingest.status import Status, latest_times, status_time, take_status

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
REGISTRY = RegistrySnapshot(
    [KnownDevice("lamp-1", DEVICE_TYPES["streetlight"], ((NOW, "lighting"),))]
)
TOPIC = "devices/lamp-1/status"


def test_the_newest_status_of_a_device_wins_in_any_order() -> None:
    statuses: dict[str, Status] = {}
    later = b'{"state": "offline", "ts": "2026-11-26T05:59:00Z"}'
    earlier = b'{"state": "online", "ts": "2026-11-26T05:58:00Z"}'
    assert take_status(statuses, TOPIC, later, REGISTRY, NOW) is None
    assert take_status(statuses, TOPIC, earlier, REGISTRY, NOW) is None
    assert statuses == {"lamp-1": (NOW - timedelta(minutes=1), "offline")}


def test_a_status_without_ts_is_stamped_on_arrival_and_a_future_one_clamped() -> None:
    statuses: dict[str, Status] = {}
    take_status(statuses, TOPIC, b'{"state": "offline"}', REGISTRY, NOW)
    assert statuses["lamp-1"] == (NOW, "offline")
    assert status_time("2026-11-26T07:00:00+00:00", NOW) == NOW
    assert status_time(1_795_672_800_000, NOW + timedelta(days=1)) == datetime.fromtimestamp(
        1_795_672_800, UTC
    )


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"online", "malformed_payload"),
        (TOPIC, b"[1]", "malformed_payload"),
        ("devices/ghost/status", b'{"state": "online"}', "unknown_device"),
        (TOPIC, b'{"state": "asleep"}', "schema_violation"),
        (TOPIC, b'{"state": "online", "ts": "yesterday"}', "schema_violation"),
        (TOPIC, b'{"state": "online", "ts": "2026-11-26T05:00:00"}', "schema_violation"),
    ],
)
def test_a_bad_status_is_a_reject_with_its_reason(topic: str, payload: bytes, reason: str) -> None:
    statuses: dict[str, Status] = {}
    reject = take_status(statuses, topic, payload, REGISTRY, NOW)
    assert reject is not None
    assert (reject.reason, reject.payload, reject.topic) == (reason, payload, topic)
    assert statuses == {}


def test_latest_times_takes_each_devices_last_reading_in_the_batch() -> None:
    rows = {
        "streetlight": [(NOW - timedelta(1), "a", "s"), (NOW, "a", "s")],
        "meter": [(NOW - timedelta(2), "b", "s")],
    }
    assert latest_times(rows) == {"a": NOW, "b": NOW - timedelta(2)}
