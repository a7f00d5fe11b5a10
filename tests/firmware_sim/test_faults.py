"""Device faults happen at their configured rates."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime

import pytest

from firmware_sim import build_fleet, default_scenario
from firmware_sim.faults import REPLACEMENT_ROUND_S, replacement_in_round
from firmware_sim.models import SimContext

T0_MS = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)


def _fault_shares(device_type: str, samples: int, spacing_s: float) -> tuple[Counter[str], int]:
    """Fault names seen over `samples` readings per device, spaced wider than an episode."""
    fleet = build_fleet(default_scenario())
    context = SimContext(fleet)
    seen: Counter[str] = Counter()
    total = 0
    for dev in fleet.devices:
        if dev.device_type != device_type:
            continue
        for j in range(samples):
            k = math.floor((T0_MS + j * spacing_s * 1000 - dev.grid_offset_ms) / dev.interval_ms)
            seen.update(context.reading(dev, k).faults)
            total += 1
    return seen, total


@pytest.mark.parametrize(
    ("device_type", "samples", "spacing_s", "expected"),
    [
        ("streetlight", 40, 3.1 * 86_400, {"lamp_failure": "lamp_failure"}),
        (
            "traffic_light",
            400,
            2.1 * 3_600,
            {"flashing_amber": "traffic_flashing", "off": "traffic_dark"},
        ),
        ("air_sensor", 400, 14.1 * 86_400, {"drift": "sensor_drift"}),
        ("air_sensor", 2_000, 6.1 * 3_600, {"stuck": "stuck_value"}),
        ("meter", 40, 7.1 * 86_400, {"leak": "meter_leak"}),
    ],
)
def test_device_faults_take_their_configured_share_of_device_time_within_20_percent(
    device_type: str, samples: int, spacing_s: float, expected: dict[str, str]
) -> None:
    seen, total = _fault_shares(device_type, samples, spacing_s)
    rates = default_scenario().faults
    for fault, field in expected.items():
        assert seen[fault] / total == pytest.approx(getattr(rates, field), rel=0.2), fault


def test_meters_are_replaced_at_the_configured_rate_per_year_within_20_percent() -> None:
    scenario = default_scenario()
    meters = [d for d in build_fleet(scenario).devices if d.device_type == "meter"]
    years = 10
    rounds = round(years * 365 * 86_400 / REPLACEMENT_ROUND_S)
    swaps = sum(
        replacement_in_round(d.key, r, scenario.faults.meter_replacement) is not None
        for d in meters
        for r in range(rounds)
    )
    per_meter_year = swaps / (len(meters) * rounds * REPLACEMENT_ROUND_S / (365 * 86_400))
    assert per_meter_year == pytest.approx(scenario.faults.meter_replacement, rel=0.2)
