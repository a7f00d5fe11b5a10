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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from firmware_sim import (
    BrokerError,
    Fleet,
    FleetRunner,
    build_fleet,
    messages,
    parse_broker_url,
)
from firmware_sim.link import NO_MATCHING_SUBSCRIBERS, NOT_AUTHORIZED, QUOTA_EXCEEDED, Link
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
# Telemetry only (no event), every stamp the simulated time, no message sent twice on purpose.
_PLAIN = """lamp_failure = 0
traffic_flashing = 0
traffic_dark = 0
meter_replacement = 0
clock_skew = 0
duplicate_publish = 0"""


def _fleet(faults: str = "") -> tuple[Fleet, str]:
    slug = f"fw{uuid.uuid4().hex[:8]}"
    city = small_city(slug=slug, devices=_DEVICES, intervals=_FAST, faults=faults)
    return build_fleet(city), slug


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
@pytest.mark.parametrize(
    ("mode", "connections", "version"),
    [("per_device", 1, "3.1.1"), ("load", 3, "3.1.1"), ("per_device", 1, "5"), ("load", 3, "5")],
)
def test_the_runner_publishes_n_messages_and_a_subscriber_receives_them_all(
    mqtt_broker: LocalMosquitto, mode: str, connections: int, version: str
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
            mqtt_version=version,  # type: ignore[arg-type]
            speed=600.0,
            start=start,
            max_messages=1500,
        )
        stats = runner.run()
        assert stats.generated == 1500
        assert stats.acknowledged == 1500 and stats.unsent == 0 and stats.dropped == 0
        assert stats.unrouted == 0
        assert stats.sim_start == start
        expected = _expected(fleet, start, 1500)
        assert subscriber.wait_until(lambda: _missing(expected, subscriber) == 0), _missing(
            expected, subscriber
        )

        def states() -> Counter[str]:
            return Counter(json.loads(p)["state"] for _, p in subscriber.payloads("status"))

        # The last statuses may still be on their way from the broker when telemetry is in.
        assert subscriber.wait_until(
            lambda: states()["online"] == len(fleet) and states()["offline"] == len(fleet),
            timeout=10,
        ), states()
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


def _offline_link(
    device_id: str, selector: selectors.BaseSelector, *, capacity: int, **options: Any
) -> Link:
    """A one-device link to a broker that is not there (nothing is sent): its buffer and its
    answers to PUBACKs are driven by hand."""
    return Link(
        client_id=device_id,
        device_ids=(device_id,),
        broker=parse_broker_url("mqtt://127.0.0.1:1"),
        username=None,
        password=None,
        selector=selector,
        keepalive=60,
        inflight=20,
        capacity=capacity,
        will=None,
        on_lost=lambda _link: None,
        online=lambda: b"{}",
        pending_writes=set(),
        **options,
    )


def test_an_offline_device_keeps_only_its_newest_readings_when_its_buffer_is_full() -> None:
    selector = selectors.DefaultSelector()
    link = _offline_link("fw-buffer-0001", selector, capacity=3)
    for n in range(5):
        link.send("devices/fw-buffer-0001/telemetry", b"%d" % n)
    assert [payload for _, payload in link.backlog] == [b"2", b"3", b"4"]
    assert link.dropped == 2
    assert not link.idle
    selector.close()


# -- MQTT 5: telemetry no subscriber took (PUBACK 0x10) ----------------------------------------


def _telemetry(fleet: Fleet, start: datetime, count: int) -> list[tuple[str, bytes]]:
    sequence = itertools.islice(messages(fleet, start, start + timedelta(days=1)), count)
    return [(m.topic, m.payload) for m in sequence if m.topic.endswith("/telemetry")]


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.fault
def test_telemetry_no_subscriber_took_is_sent_again_later_with_its_original_timestamp(
    service_dir: Path,
) -> None:
    broker = LocalMosquitto(service_dir)
    broker.start()
    fleet, slug = _fleet(_PLAIN)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    runner = FleetRunner(
        fleet,
        url=broker.url,
        mqtt_version="5",
        speed=20.0,
        start=start,
        max_messages=900,
        drain_timeout=timedelta(seconds=60),
    )
    thread = threading.Thread(target=runner.run)
    subscriber: Subscriber | None = None
    try:
        thread.start()
        # Nothing subscribes: the broker answers every telemetry publish with 0x10.
        _wait(
            lambda: runner.progress().unrouted >= len(fleet) and runner.progress().generated >= 300,
            30,
            "publishes no subscriber took",
        )
        assert runner.progress().acknowledged == 0
        # Held with a backoff, not spinning: over 2 s each device tries again a few times.
        before = runner.progress().unrouted
        time.sleep(2.0)
        assert runner.progress().unrouted - before <= 4 * len(fleet)
        taken_before = runner.progress().sim_end
        subscriber = Subscriber(broker.url, f"sub-{slug}", slug)
        thread.join(timeout=90)
        assert not thread.is_alive()
        stats = runner.stats
        assert (stats.generated, stats.acknowledged, stats.unsent, stats.dropped) == (
            900,
            900,
            0,
            0,
        )
        assert stats.unrouted >= len(fleet)
        expected = Counter(_telemetry(fleet, start, 900))
        got = subscriber
        assert got.wait_until(lambda: Counter(got.payloads("telemetry")) == expected), sum(
            (expected - Counter(got.payloads("telemetry"))).values()
        )
        # Every message once, byte for byte: with the timestamp it was taken at, including the
        # readings taken before anyone subscribed.
        assert taken_before is not None
        early = [p for _, p in got.payloads("telemetry") if _stamp(p) <= taken_before.timestamp()]
        assert len(early) >= 250
    finally:
        runner.stop()
        thread.join(timeout=30)
        if subscriber is not None:
            subscriber.close()
        broker.stop()


@pytest.mark.integration
@pytest.mark.fault
def test_a_device_holding_unrouted_telemetry_keeps_its_newest_readings_within_its_buffer(
    service_dir: Path,
) -> None:
    broker = LocalMosquitto(service_dir)
    broker.start()
    fleet, slug = _fleet(_PLAIN)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    runner = FleetRunner(
        fleet,
        url=broker.url,
        mqtt_version="5",
        speed=30.0,
        start=start,
        max_messages=300,
        buffer_limit=5,
        drain_timeout=timedelta(seconds=60),
    )
    thread = threading.Thread(target=runner.run)
    subscriber: Subscriber | None = None
    try:
        thread.start()
        # Every message generated while nothing subscribes (the runner is draining).
        _wait(lambda: runner.progress().generated == 300, 30, "300 messages")
        subscriber = Subscriber(broker.url, f"sub-{slug}", slug)
        thread.join(timeout=90)
        assert not thread.is_alive()
        stats = runner.stats
        assert stats.dropped > 0 and stats.unsent == 0
        assert stats.acknowledged + stats.dropped == stats.generated == 300
        got = subscriber
        assert got.wait_until(lambda: len(got.payloads("telemetry")) >= stats.acknowledged)
        received = Counter(got.payloads("telemetry"))
        assert sum(received.values()) == stats.acknowledged
        by_device: dict[str, list[tuple[str, bytes]]] = {}
        for message in _telemetry(fleet, start, 300):
            by_device.setdefault(message[0], []).append(message)
        lost = 0
        for sent in by_device.values():
            kept = [m for m in sent if received[m]]
            # What a device dropped is its oldest; it kept (and sent once) the newest.
            assert kept == sent[len(sent) - len(kept) :]
            assert all(received[m] == 1 for m in kept)
            lost += len(sent) - len(kept)
        assert lost == stats.dropped
    finally:
        runner.stop()
        thread.join(timeout=30)
        if subscriber is not None:
            subscriber.close()
        broker.stop()


@pytest.mark.integration
@pytest.mark.fault
def test_over_mqtt_3_1_1_the_broker_acknowledges_what_no_subscriber_took_and_it_is_lost(
    service_dir: Path,
) -> None:
    broker = LocalMosquitto(service_dir)
    broker.start()
    fleet, slug = _fleet(_PLAIN)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    try:
        runner = FleetRunner(
            fleet, url=broker.url, mqtt_version="3.1.1", speed=60.0, start=start, max_messages=100
        )
        stats = runner.run()
        # The trade-off of 3.1.1: the PUBACK cannot say that nobody took the messages.
        assert (stats.acknowledged, stats.unrouted, stats.unsent) == (100, 0, 0)
        subscriber = Subscriber(broker.url, f"sub-{slug}", slug)
        # A barrier, not a pause: a retained message comes on SUBSCRIBE, before this one.
        marker = f"devices/{slug}-marker/telemetry"
        subscriber.client.publish(marker, b"marker", qos=1)
        assert subscriber.wait_until(lambda: bool(subscriber.payloads("telemetry")))
        assert subscriber.payloads("telemetry") == [(marker, b"marker")]
        subscriber.close()
    finally:
        broker.stop()


def test_unrouted_telemetry_goes_back_to_the_front_of_the_buffer_in_the_order_it_was_sent() -> None:
    selector = selectors.DefaultSelector()
    holds: list[Link] = []
    link = _offline_link(
        "fw-unrouted-0001", selector, capacity=4, mqtt_version="5", on_hold=holds.append
    )
    telemetry = "devices/fw-unrouted-0001/telemetry"
    unrouted = ReasonCode(PacketTypes.PUBACK, identifier=NO_MATCHING_SUBSCRIBERS)
    success = ReasonCode(PacketTypes.PUBACK, identifier=0)
    # Readings 1 and 2 in flight (the broker answers in order), 3 and 4 waiting.
    link._in_flight.update({1: (telemetry, b"1"), 2: (telemetry, b"2")})
    link.outstanding = 2
    for n in (3, 4):
        link.send(telemetry, b"%d" % n)
    for mid in (1, 2):
        link._acknowledged_v5(None, None, mid, unrouted, None)
    assert [p for _, p in link.backlog] == [b"1", b"2", b"3", b"4"]
    assert (link.unrouted, link.acked, link.outstanding, link.window) == (2, 0, 0, 0)
    assert holds == [link] and link.held
    # Held: a new reading waits, and the buffer keeps its bound by dropping the oldest.
    link.send(telemetry, b"5")
    assert [p for _, p in link.backlog] == [b"2", b"3", b"4", b"5"]
    assert link.dropped == 1
    link.hold_attempts = 1  # as the runner counts it
    link.resume()
    assert (link.held, link.window) == (False, 1)
    # The broker routes telemetry again: the full window, and the backoff starts over.
    link._in_flight[3] = (telemetry, b"2")
    link.outstanding = 1
    link._acknowledged_v5(None, None, 3, success, None)
    assert (link.acked, link.window, link.hold_attempts) == (1, 20, 0)
    # An event no subscriber took is final: nothing in the platform subscribes to events.
    link._in_flight[4] = ("devices/fw-unrouted-0001/events", b"e")
    link.outstanding = 1
    link._acknowledged_v5(None, None, 4, unrouted, None)
    assert (link.acked, link.unrouted, link.held) == (2, 2, False)
    selector.close()


# -- MQTT 5: messages the broker refuses (PUBACK 0x87, 0x97) -----------------------------------


def test_a_message_the_broker_refuses_is_counted_as_refused_not_published() -> None:
    selector = selectors.DefaultSelector()
    link = _offline_link("fw-refused-0001", selector, capacity=4, mqtt_version="5")
    telemetry = "devices/fw-refused-0001/telemetry"
    answers = [NOT_AUTHORIZED, QUOTA_EXCEEDED, 0, NOT_AUTHORIZED]
    topics = [telemetry, telemetry, telemetry, "devices/fw-refused-0001/events"]
    for mid, topic_name in enumerate(topics, start=1):
        link._in_flight[mid] = (topic_name, b"%d" % mid)
    link.outstanding = len(topics)
    for mid, code in enumerate(answers, start=1):
        link._acknowledged_v5(
            None, None, mid, ReasonCode(PacketTypes.PUBACK, identifier=code), None
        )
    # Refused for good: not published, not sent again, and the link does not hold.
    assert (link.acked, link.refused, link.unrouted, link.outstanding) == (1, 3, 0, 0)
    assert not link.backlog and not link.held and link.window == 20
    selector.close()


@pytest.mark.integration
def test_telemetry_the_broker_acl_denies_is_refused_and_not_counted_as_published(
    service_dir: Path,
) -> None:
    fleet, slug = _fleet(_PLAIN)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    allowed = sorted(device.device_id for device in fleet.devices)[: len(fleet) // 2]
    acl = service_dir / "acl"
    acl.write_text(
        "topic read devices/#\ntopic write devices/+/status\n"
        + "".join(f"topic write devices/{d}/telemetry\n" for d in allowed),
        encoding="utf-8",
    )
    broker = LocalMosquitto(service_dir, extra_config=f"acl_file {acl}", persistence=False)
    broker.start()
    subscriber = Subscriber(broker.url, f"sub-{slug}", slug)
    try:
        runner = FleetRunner(
            fleet, url=broker.url, mqtt_version="5", speed=600.0, start=start, max_messages=400
        )
        stats = runner.run()
        sent = _telemetry(fleet, start, 400)
        permitted = [m for m in sent if m[0].split("/")[1] in allowed]
        assert 0 < len(permitted) < len(sent) == 400
        # Mosquitto answers a publish its ACL denies with 0x87: refused, never published.
        assert (stats.acknowledged, stats.refused) == (len(permitted), len(sent) - len(permitted))
        assert stats.unsent == 0 and stats.dropped == 0 and stats.unrouted == 0
        assert subscriber.wait_until(
            lambda: Counter(subscriber.payloads("telemetry")) == Counter(permitted)
        ), len(subscriber.payloads("telemetry"))
    finally:
        subscriber.close()
        broker.stop()
