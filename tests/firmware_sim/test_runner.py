"""The fleet runner against a real Mosquitto."""

from __future__ import annotations

import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sim import (
    BrokerError,
    Fleet,
    FleetRunner,
    build_fleet,
    messages,
    parse_broker_url,
)
from firmware_sim.link import Link
from silobreak.local import LocalMosquitto
from tests.firmware_sim.checks import Subscriber, decode, small_city

_DEVICES = """
devices.lighting = { streetlight = 8 }
devices.mobility = { traffic_light = 4 }
devices.environment = { air_sensor = 3 }
devices.energy = { meter = { electricity = 3, gas = 1 } }
devices.water = { meter = { water = 2 } }
"""
_FAST = "streetlight = 2\ntraffic_light = 1\nair_sensor = 2\nmeter = 3"


def _fleet() -> tuple[Fleet, str]:
    slug = f"fw{uuid.uuid4().hex[:8]}"
    return build_fleet(small_city(slug=slug, devices=_DEVICES, intervals=_FAST)), slug


def _expected(fleet: Fleet, start: datetime, count: int) -> Counter[tuple[str, bytes]]:
    sequence = messages(fleet, start, start + timedelta(days=1))
    return Counter((m.topic, m.payload) for m in itertools.islice(sequence, count))


def _missing(expected: Counter[tuple[str, bytes]], subscriber: Subscriber) -> int:
    got = Counter(subscriber.payloads("telemetry") + subscriber.payloads("events"))
    return sum((expected - got).values())


def test_broker_urls_are_parsed_and_bad_ones_are_one_clear_error() -> None:
    address = parse_broker_url("mqtt://sim:p%40ss@broker.example:1884")
    assert (address.host, address.port, address.username, address.password) == (
        "broker.example",
        1884,
        "sim",
        "p@ss",
    )
    assert parse_broker_url("mqtts://h").port == 8883
    assert str(address) == "mqtt://sim@broker.example:1884"
    for bad in ("http://h:1883", "mqtt://h:99999", "mqtt://:1883"):
        with pytest.raises(BrokerError, match="broker URL"):
            parse_broker_url(bad)


@pytest.mark.integration
@pytest.mark.parametrize(("mode", "connections"), [("per_device", 1), ("load", 3)])
def test_the_runner_publishes_n_messages_and_a_subscriber_receives_them_all(
    mqtt_broker: LocalMosquitto, mode: str, connections: int
) -> None:
    fleet, slug = _fleet()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    subscriber = Subscriber(mqtt_broker.url, f"sub-{slug}", slug)
    try:
        runner = FleetRunner(
            fleet,
            url=mqtt_broker.url,
            mode=mode,  # type: ignore[arg-type]
            connections=connections,
            speed=600.0,
            start=start,
            max_messages=1500,
        )
        stats = runner.run()
        assert stats.generated == 1500
        assert stats.acknowledged == 1500 and stats.unsent == 0 and stats.dropped == 0
        assert stats.sim_start == start
        expected = _expected(fleet, start, 1500)
        assert subscriber.wait_until(lambda: _missing(expected, subscriber) == 0), _missing(
            expected, subscriber
        )
        states = Counter(json.loads(p)["state"] for _, p in subscriber.payloads("status"))
        assert states["online"] == len(fleet) and states["offline"] == len(fleet)
    finally:
        subscriber.close()


@pytest.mark.integration
@pytest.mark.fault
@pytest.mark.slow
def test_readings_taken_while_the_broker_is_down_arrive_later_with_their_original_timestamps(
    service_dir: Path,
) -> None:
    broker = LocalMosquitto(service_dir)
    broker.start()
    fleet, slug = _fleet()
    subscriber = Subscriber(broker.url, f"sub-{slug}", slug, persistent=True)
    runner = FleetRunner(fleet, url=broker.url, speed=1.0, buffer_limit=10_000)
    thread = threading.Thread(target=runner.run)
    try:
        thread.start()
        assert subscriber.wait_until(lambda: len(subscriber.payloads("telemetry")) >= 30)
        broker.stop()
        cut_at = time.time()
        assert subscriber.wait_until(lambda: runner.progress().buffered >= 30)
        broker.start()
        back_at = time.time()
        assert subscriber.wait_until(
            lambda: (p := runner.progress()).online == len(fleet) and p.unsent == 0
        )
        runner.stop()
        thread.join(timeout=30)
        assert not thread.is_alive()
        stats = runner.stats
        assert stats.buffered >= 30 and stats.dropped == 0 and stats.unsent == 0
        assert stats.sim_start is not None
        expected = _expected(fleet, stats.sim_start, stats.generated)
        assert subscriber.wait_until(lambda: _missing(expected, subscriber) == 0), _missing(
            expected, subscriber
        )
        backfilled = [
            payload
            for topic, payload, received_at in list(subscriber.received)
            if topic.endswith("/telemetry") and received_at >= back_at and _stamp(payload) < back_at
        ]
        # Readings from the outage arrive after it, stamped with when they were taken (that
        # none is missing is checked above; how many fall on which side of `back_at` depends
        # on scheduling, so only their presence is asserted here).
        assert any(cut_at <= _stamp(payload) < back_at for payload in backfilled)
    finally:
        runner.stop()
        thread.join(timeout=30)
        subscriber.close()
        broker.stop()


def _stamp(payload: bytes) -> float:
    try:
        return decode(payload)[0].timestamp()
    except (ValueError, KeyError, TypeError):
        return float("inf")


_CHILD = """
import sys
from datetime import timedelta
from firmware_sim import FleetRunner, build_fleet
from tests.firmware_sim.checks import small_city
lights = "devices.lighting = {{ streetlight = 3 }}"
fleet = build_fleet(small_city(slug=sys.argv[1], devices=lights))
FleetRunner(fleet, url=sys.argv[2], duration=timedelta(seconds=120)).run()
"""


@pytest.mark.integration
@pytest.mark.fault
def test_a_device_that_vanishes_is_marked_offline_by_its_last_will(
    mqtt_broker: LocalMosquitto,
) -> None:
    slug = f"fw{uuid.uuid4().hex[:8]}"
    subscriber = Subscriber(mqtt_broker.url, f"sub-{slug}", slug)
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(), slug, mqtt_broker.url],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:

        def states(state: str) -> set[str]:
            return {t for t, p in subscriber.payloads("status") if json.loads(p)["state"] == state}

        assert subscriber.wait_until(lambda: len(states("online")) == 3)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert subscriber.wait_until(lambda: len(states("offline")) == 3)
        wills = [json.loads(p) for _, p in subscriber.payloads("status")]
        assert {"state": "offline"} in wills
    finally:
        child.kill()
        child.wait(timeout=10)
        subscriber.close()


def test_an_offline_device_keeps_only_its_newest_readings_when_its_buffer_is_full() -> None:
    selector = selectors.DefaultSelector()
    link = Link(
        client_id="fw-buffer-0001",
        device_ids=("fw-buffer-0001",),
        broker=parse_broker_url("mqtt://127.0.0.1:1"),
        username=None,
        password=None,
        selector=selector,
        keepalive=60,
        inflight=20,
        capacity=3,
        will=None,
        on_lost=lambda _link: None,
        online=lambda: b"{}",
        pending_writes=set(),
    )
    for n in range(5):
        link.send("devices/fw-buffer-0001/telemetry", b"%d" % n)
    assert [payload for _, payload in link.backlog] == [b"2", b"3", b"4"]
    assert link.dropped == 2
    assert not link.idle
    selector.close()
