"""Behaviour models: streetlights, traffic, air quality, meters and their faults."""

from __future__ import annotations

import itertools
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from devices.catalog import SHIPPED, activated, catalog_from_document
from firmware_sim import SimMessage, build_fleet, messages, sun_times
from tests.firmware_sim.checks import Metrics, catalog_problems, decode, small_city

PARIS = ZoneInfo("Europe/Paris")
# Monday 16 to Monday 30 November 2026: two whole weeks.
WEEKS = (datetime(2026, 11, 16, tzinfo=PARIS), datetime(2026, 11, 30, tzinfo=PARIS))


def _readings(sequence: Iterable[SimMessage]) -> list[tuple[SimMessage, Metrics]]:
    """Telemetry that was sent whole and in range, decoded."""
    return [(m, decode(m.payload)[1]) for m in sequence if m.kind == "ok"]


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 1, 15),
        date(2026, 3, 20),
        date(2026, 6, 21),
        date(2026, 9, 22),
        date(2026, 12, 21),
    ],
)
def test_no_streetlight_is_on_at_solar_noon(day: date) -> None:
    scenario = small_city(
        devices="devices.lighting = { streetlight = 200 }",
        intervals="streetlight = 60",
        faults="lamp_failure = 0.3",
    )
    noon = sun_times(scenario.city.lat, scenario.city.lon, day).noon
    sequence = messages(
        build_fleet(scenario), noon - timedelta(minutes=10), noon + timedelta(minutes=10)
    )
    readings = _readings(sequence)
    assert len(readings) > 3000
    assert all(metrics["lamp_on"] is False for _, metrics in readings)
    assert all(metrics["power_w"] < 1.0 for _, metrics in readings)


def test_streetlights_burn_from_dusk_to_dawn_dimmed_after_23h_and_a_failed_lamp_draws_nothing() -> (
    None
):
    scenario = small_city(
        devices="devices.lighting = { streetlight = 100 }",
        intervals="streetlight = 600",
        faults="lamp_failure = 0.2",
    )
    fleet = build_fleet(scenario)
    day = date(2026, 11, 26)
    sun = sun_times(scenario.city.lat, scenario.city.lon, day)
    assert sun.sunset is not None
    evening = _readings(
        messages(
            fleet, sun.sunset + timedelta(minutes=20), datetime(2026, 11, 26, 22, 55, tzinfo=PARIS)
        )
    )
    night = _readings(
        messages(
            fleet,
            datetime(2026, 11, 27, 0, 5, tzinfo=PARIS),
            datetime(2026, 11, 27, 4, 55, tzinfo=PARIS),
        )
    )
    full: dict[str, list[float]] = defaultdict(list)
    for message, metrics in evening:
        assert metrics["lamp_on"] is True and metrics["dim_level"] == 100
        if "lamp_failure" not in message.faults:
            full[message.device_id].append(metrics["power_w"])
    failed = 0
    for message, metrics in night:
        assert metrics["lamp_on"] is True and metrics["dim_level"] == 50
        if "lamp_failure" in message.faults:
            failed += 1
            assert metrics["power_w"] == 0
        elif full[message.device_id]:
            # Power follows the dimming level: half the light, about half the power.
            ratio = metrics["power_w"] / statistics.mean(full[message.device_id])
            assert 0.45 < ratio < 0.6
    assert failed > 0


def _hourly(
    readings: list[tuple[SimMessage, Metrics]], metric: str, *, weekend: bool
) -> dict[int, float]:
    buckets: dict[int, list[float]] = defaultdict(list)
    for message, metrics in readings:
        local = message.time.astimezone(PARIS)
        if (local.weekday() >= 5) == weekend:
            buckets[local.hour].append(float(metrics[metric]))
    return {hour: statistics.mean(values) for hour, values in buckets.items()}


def test_traffic_counts_peak_in_the_morning_and_evening_rush_hours_on_weekdays_only() -> None:
    scenario = small_city(
        devices="devices.mobility = { traffic_light = 10 }", intervals="traffic_light = 300"
    )
    readings = _readings(messages(build_fleet(scenario), *WEEKS))
    weekday = _hourly(readings, "vehicle_count", weekend=False)
    weekend = _hourly(readings, "vehicle_count", weekend=True)
    assert max(range(5, 11), key=weekday.__getitem__) in (7, 8, 9)
    assert max(range(15, 21), key=weekday.__getitem__) in (17, 18, 19)
    assert weekday[8] > 1.5 * weekday[13] and weekday[18] > 1.5 * weekday[13]
    assert weekday[3] < 0.15 * weekday[8]
    assert weekend[8] < 0.4 * weekday[8]
    assert max(weekend, key=weekend.__getitem__) in range(11, 18)


def test_no2_rises_and_falls_with_traffic_in_the_same_district() -> None:
    scenario = small_city(
        devices=(
            "devices.mobility = { traffic_light = 4 }\ndevices.environment = { air_sensor = 3 }"
        ),
        intervals="traffic_light = 300\nair_sensor = 300",
        faults="sensor_drift = 0\nstuck_value = 0",
    )
    no2: dict[datetime, list[float]] = defaultdict(list)
    vehicles: dict[datetime, int] = defaultdict(int)
    for message, metrics in _readings(messages(build_fleet(scenario), *WEEKS)):
        hour = message.time.replace(minute=0, second=0, microsecond=0)
        if "no2" in metrics:
            no2[hour].append(metrics["no2"])
        else:
            vehicles[hour] += metrics["vehicle_count"]
    hours = sorted(set(no2) & set(vehicles))
    assert len(hours) > 300
    pearson = statistics.correlation(
        [statistics.mean(no2[h]) for h in hours], [vehicles[h] for h in hours]
    )
    assert pearson > 0.3


def test_a_drifting_sensor_reads_high_by_a_bias_that_grows_with_time() -> None:
    clean = small_city(
        devices="devices.environment = { air_sensor = 3 }",
        faults="sensor_drift = 0\nstuck_value = 0",
    )
    drifting = small_city(
        devices="devices.environment = { air_sensor = 3 }",
        faults="sensor_drift = 1\nstuck_value = 0",
    )
    span = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 13, tzinfo=UTC))
    base = _readings(messages(build_fleet(clean), *span))
    drift = _readings(messages(build_fleet(drifting), *span))
    assert [m.seq for m, _ in base] == [m.seq for m, _ in drift]
    bias: dict[str, list[float]] = defaultdict(list)
    for (message, before), (faulty, after) in zip(base, drift, strict=True):
        assert faulty.faults == ("drift",) and message.faults == ()
        bias[message.device_id].append(after["no2"] - before["no2"])
    for series in bias.values():
        assert all(b >= -0.11 for b in series)
        # It only grows, except once when a 14-day episode ends and the next one starts.
        assert sum(1 for a, b in itertools.pairwise(series) if b < a - 0.2) <= 1
        assert max(series) > 10.0


def test_a_stuck_sensor_repeats_the_first_reading_of_its_episode() -> None:
    scenario = small_city(
        devices="devices.environment = { air_sensor = 3 }",
        faults="stuck_value = 1\nsensor_drift = 0",
    )
    span = (datetime(2026, 11, 16, tzinfo=UTC), datetime(2026, 11, 18, tzinfo=UTC))
    values: dict[str, list[str]] = defaultdict(list)
    for message, metrics in _readings(messages(build_fleet(scenario), *span)):
        values[message.device_id].append(json.dumps(metrics, sort_keys=True))
    for readings in values.values():
        # Always stuck: one value per 6-hour episode, 8 or 9 episodes in two days.
        assert len(readings) > 1000
        assert len(set(readings)) <= 9
        assert sum(1 for a, b in itertools.pairwise(readings) if a != b) <= 8


def test_meter_indexes_never_decrease_except_when_the_meter_is_replaced() -> None:
    scenario = small_city(
        devices=(
            "devices.energy = { meter = { electricity = 15, gas = 10 } }\n"
            "devices.water = { meter = { water = 15 } }"
        ),
        intervals="meter = 21600",
        faults="meter_replacement = 4\nmeter_leak = 0.2",
    )
    span = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC))
    sequence = list(messages(build_fleet(scenario), *span))
    replaced: dict[str, list[int]] = defaultdict(list)
    for message in sequence:
        if message.kind == "event":
            assert b'"meter_replaced"' in message.payload
            replaced[message.device_id].append(message.seq)
    last: dict[str, tuple[int, float]] = {}
    drops = 0
    for message, metrics in _readings(sequence):
        index = metrics["index"]
        previous = last.get(message.device_id)
        if previous is not None and index < previous[1]:
            drops += 1
            assert any(previous[0] < s <= message.seq for s in replaced[message.device_id])
            # A new meter starts near 0 and has run for at most one 6-hour interval since.
            assert index < 50.0
        last[message.device_id] = (message.seq, index)
    assert drops > 20


def test_a_leak_shows_as_flow_in_the_middle_of_the_night() -> None:
    scenario = small_city(
        devices="devices.water = { meter = { water = 30 } }",
        intervals="meter = 3600",
        faults="meter_leak = 0.3",
    )
    night: dict[str, list[float]] = {"leak": [], "dry": []}
    for message, metrics in _readings(messages(build_fleet(scenario), *WEEKS)):
        if message.time.astimezone(PARIS).hour in (2, 3, 4):
            night["leak" if "leak" in message.faults else "dry"].append(metrics["flow"])
    assert night["leak"] and night["dry"]
    assert min(night["leak"]) > 0.005 > 0.002 > max(night["dry"])


def test_street_noise_follows_traffic_and_its_maximum_is_above_its_equivalent_level() -> None:
    scenario = small_city(
        devices="devices.environment = { noise_sensor = 6 }", intervals="noise_sensor = 600"
    )
    readings = _readings(messages(build_fleet(scenario), *WEEKS))
    assert all(not catalog_problems("noise_sensor", m) for _, m in readings)
    weekday = _hourly(readings, "laeq", weekend=False)
    # Energy means of the hour: the rush hour is several dB above the small hours.
    assert weekday[8] > weekday[3] + 6.0
    assert 40.0 < weekday[3] < 60.0 and 55.0 < weekday[8] < 75.0
    assert all(m["lamax"] >= m["laeq"] + 8.0 for _, m in readings)


def test_parking_bays_fill_up_by_day_and_stay_taken_for_a_while() -> None:
    scenario = small_city(
        devices="devices.mobility = { parking_bay = 40 }", intervals="parking_bay = 300"
    )
    readings = _readings(messages(build_fleet(scenario), *WEEKS))
    assert all(not catalog_problems("parking_bay", m) for _, m in readings)
    weekday = _hourly(readings, "occupied", weekend=False)
    assert weekday[11] > weekday[3] + 0.2
    # A car stays: consecutive readings of a bay mostly agree.
    by_bay: dict[str, list[bool]] = defaultdict(list)
    for message, m in readings:
        by_bay[message.device_id].append(bool(m["occupied"]))
    pairs = [(a, b) for states in by_bay.values() for a, b in itertools.pairwise(states)]
    assert sum(a == b for a, b in pairs) > 0.8 * len(pairs)


def test_a_type_of_an_operators_catalog_gets_readings_in_its_ranges() -> None:
    extra = catalog_from_document(
        {
            "types": [
                {
                    "name": "bike_counter", "service": "mobility", "description": "Bikes.",
                    "interval": "15m",
                    "metrics": [
                        {"name": "bikes", "kind": "whole", "min": 0, "max": 500,
                         "description": "Bikes past."},
                        {"name": "lane", "kind": "enum", "codes": {"north": 0, "south": 1},
                         "description": "Lane."},
                        {"name": "wet", "kind": "bool", "description": "Road wet."},
                    ],
                }
            ]
        }
    )  # fmt: skip
    with activated(SHIPPED.extended(extra)):
        scenario = small_city(devices="devices.mobility = { bike_counter = 3 }")
        fleet = build_fleet(scenario)
        assert {d.interval_ms for d in fleet.devices} == {900_000}
        readings = _readings(messages(fleet, WEEKS[0], WEEKS[0] + timedelta(days=1)))
        assert len(readings) > 200
        assert all(not catalog_problems("bike_counter", m) for _, m in readings)
        assert {m["lane"] for _, m in readings} == {"north", "south"}
