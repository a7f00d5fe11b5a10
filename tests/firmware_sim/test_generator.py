"""messages(): determinism, order, payload formats and fault rates."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sim import SimMessage, build_fleet, default_scenario, messages, scale_scenario
from tests.firmware_sim.checks import catalog_problems, decode

START = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)


def _run(seed: int, devices: int = 300, hours: float = 2.0) -> list[SimMessage]:
    fleet = build_fleet(scale_scenario(default_scenario(), devices), seed=seed)
    return list(messages(fleet, START, START + timedelta(hours=hours)))


def test_same_seed_scenario_and_range_give_a_byte_identical_sequence() -> None:
    first, second = _run(seed=11), _run(seed=11)
    assert len(first) > 5000
    assert [(m.time, m.topic, m.payload, m.kind) for m in first] == [
        (m.time, m.topic, m.payload, m.kind) for m in second
    ]


def test_another_seed_gives_another_sequence() -> None:
    assert [m.payload for m in _run(seed=1, hours=0.5)] != [
        m.payload for m in _run(seed=2, hours=0.5)
    ]


def test_a_message_does_not_depend_on_where_the_range_starts() -> None:
    fleet = build_fleet(scale_scenario(default_scenario(), 200))
    middle = START + timedelta(minutes=37, seconds=13)
    whole = list(messages(fleet, START, START + timedelta(hours=1)))
    halves = list(messages(fleet, START, middle)) + list(
        messages(fleet, middle, START + timedelta(hours=1))
    )
    assert whole == halves


def test_messages_come_in_time_order_inside_the_range() -> None:
    sequence = _run(seed=3, hours=1.0)
    times = [m.time for m in sequence]
    assert times == sorted(times)
    assert times[0] >= START
    assert times[-1] < START + timedelta(hours=1)


def test_seq_counts_up_by_one_per_reading_of_a_device() -> None:
    last: dict[str, int] = {}
    for message in _run(seed=3, hours=1.0):
        if message.kind in ("duplicate", "event"):
            continue
        if message.device_id in last:
            assert message.seq == last[message.device_id] + 1
        last[message.device_id] = message.seq


def test_every_unfaulted_payload_validates_against_the_catalog() -> None:
    fleet = build_fleet(scale_scenario(default_scenario(), 400))
    types = {d.device_id: d.device_type for d in fleet.devices}
    kinds: Counter[str] = Counter()
    original: dict[str, str] = {}
    for message in messages(fleet, START, START + timedelta(hours=6)):
        kinds[message.kind] += 1
        if message.kind == "event":
            event = json.loads(message.payload)
            assert message.topic.endswith("/events") and event["kind"] and event["ts"]
            continue
        # A duplicate resends whatever its original was, broken or not.
        kind = original[message.device_id] if message.kind == "duplicate" else message.kind
        original[message.device_id] = kind
        if kind == "malformed":
            with pytest.raises((ValueError, KeyError, TypeError)):
                decode(message.payload)
            continue
        _, metrics = decode(message.payload)
        problems = catalog_problems(types[message.device_id], metrics)
        if kind == "out_of_range":
            assert problems, message.payload
        else:
            assert problems == [], (message.payload, problems)
    assert kinds["ok"] > 10_000 and kinds["malformed"] and kinds["out_of_range"]


def test_json_timestamps_are_utc_with_milliseconds_and_skew_stays_within_a_minute() -> None:
    fleet = build_fleet(scale_scenario(default_scenario(), 1000))
    skews = set()
    for message in itertools.islice(messages(fleet, START, START + timedelta(hours=1)), 20_000):
        if message.kind not in ("ok", "duplicate") or message.payload.startswith(b"["):
            continue
        stamp = json.loads(message.payload)["ts"]
        assert len(stamp) == 24 and stamp.endswith("Z") and stamp[19] == "."
        ts, _ = decode(message.payload)
        skew = (ts - message.time).total_seconds()
        assert abs(skew) <= 60.0
        skews.add(round(skew, 3))
    assert len(skews) > 10


def test_senml_packs_carry_the_device_as_base_name_and_epoch_base_time() -> None:
    fleet = build_fleet(scale_scenario(default_scenario(), 500))
    packs = [
        m
        for m in messages(fleet, START, START + timedelta(minutes=30))
        if m.kind == "ok" and m.payload.startswith(b"[")
    ]
    assert packs
    for message in packs:
        records = json.loads(message.payload)
        assert records[0]["bn"] == f"{message.device_id}:"
        assert abs(records[0]["bt"] - message.time.timestamp()) <= 60.0
        assert all("bn" not in r for r in records[1:])


def test_a_duplicate_resends_the_bytes_of_the_reading_before_it() -> None:
    sequence = _run(seed=5, hours=2.0)
    duplicates = 0
    for before, message in itertools.pairwise(sequence):
        if message.kind == "duplicate":
            duplicates += 1
            assert (before.topic, before.payload, before.seq) == (
                message.topic,
                message.payload,
                message.seq,
            )
    assert duplicates > 10


def test_message_fault_rates_are_within_20_percent_of_the_configured_ones() -> None:
    scenario = default_scenario()
    fleet = build_fleet(scenario)
    kinds = Counter(
        m.kind for m in itertools.islice(messages(fleet, START, START + timedelta(days=1)), 100_000)
    )
    readings = kinds["ok"] + kinds["malformed"] + kinds["out_of_range"]
    faults = scenario.faults
    for observed, configured in [
        (kinds["malformed"] / readings, faults.malformed_payload),
        (kinds["out_of_range"] / readings, faults.out_of_range),
        (kinds["duplicate"] / readings, faults.duplicate_publish),
    ]:
        assert observed == pytest.approx(configured, rel=0.2)
    devices = fleet.devices
    assert sum(d.senml for d in devices) / len(devices) == pytest.approx(
        faults.senml_share, rel=0.2
    )
    skewed = [d for d in devices if d.skew_ms]
    assert len(skewed) / len(devices) == pytest.approx(faults.clock_skew, rel=0.2)
    assert all(0 < abs(d.skew_ms) <= 60_000 for d in skewed)
