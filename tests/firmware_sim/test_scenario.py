"""The scenario file: validation, the shipped city, scaling."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from firmware_sim import (
    ScenarioError,
    default_scenario,
    load_scenario,
    parse_scenario,
    scale_scenario,
)

_MINIMAL = """
[city]
name = "{name}"
lat = 45.19
lon = 5.72
timezone = "{tz}"
[[districts]]
name = "centre"
bbox = {bbox}
devices.lighting = {{ streetlight = 3 }}
{extra}
"""


def _text(
    *,
    name: str = "Grenoble",
    tz: str = "Europe/Paris",
    bbox: str = "[45.18, 5.71, 45.20, 5.74]",
    extra: str = "",
) -> str:
    return _MINIMAL.format(name=name, tz=tz, bbox=bbox, extra=extra)


def test_default_city_is_a_french_city_of_a_few_thousand_devices_in_six_districts() -> None:
    scenario = default_scenario()
    assert scenario.city.zone == ZoneInfo("Europe/Paris")
    assert len(scenario.districts) == 6
    assert 2000 <= scenario.device_count <= 5000
    kinds = {(s, t, m) for d in scenario.districts for s, t, m, n in d.cells() if n}
    assert ("water", "meter", "water") in kinds
    assert ("energy", "meter", "electricity") in kinds
    assert ("energy", "meter", "gas") in kinds


def test_a_minimal_scenario_takes_defaults_and_derives_the_id_prefix() -> None:
    scenario = parse_scenario(_text(name="Saint-Étienne"))
    assert scenario.city.slug == "saint-etienne"
    assert scenario.intervals.streetlight == 300
    assert scenario.device_count == 3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (_text(tz="Europe/Grenoble"), "city.timezone"),
        (_text(bbox="[45.20, 5.71, 45.18, 5.74]"), "districts.0.bbox"),
        (_text(extra="devices.energy = { boiler = 3 }"), "unknown device type 'boiler'"),
        (_text(extra="devices.energy = { meter = 3 }"), "give counts per medium"),
        (_text(extra="devices.water = { meter = { beer = 3 } }"), "unknown medium 'beer'"),
        (_text(extra="devices.Water = { meter = { water = 3 } }"), "service 'Water'"),
        (_text() + "\n[faults]\nmalformed_payload = 1.5\n", "faults.malformed_payload"),
        (_text() + "\n[faults]\nclock_skew_max_s = 600\n", "faults.clock_skew_max_s"),
        (_text() + "\n[intervals]\nmeter = 0.1\n", "intervals.meter"),
        (_text() + "\n[city2]\n", "city2"),
    ],
)
def test_a_bad_scenario_is_one_error_naming_the_field(text: str, fragment: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, source="city.toml")
    message = str(caught.value)
    assert fragment in message
    assert message.startswith("scenario 'city.toml': ")
    assert "\n" not in message


def test_a_missing_scenario_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "nope.toml")


def test_a_scenario_that_is_not_toml_is_a_scenario_error(tmp_path: Path) -> None:
    path = tmp_path / "city.toml"
    path.write_text("[city\nname = 1\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(path)


@pytest.mark.parametrize("devices", [1, 43, 500, 3433, 10_000])
def test_scaling_gives_exactly_the_requested_number_of_devices(devices: int) -> None:
    assert scale_scenario(default_scenario(), devices).device_count == devices


def test_scaling_down_keeps_one_device_of_every_kind_in_every_district() -> None:
    scaled = scale_scenario(default_scenario(), 100)
    for district in scaled.districts:
        assert all(n >= 1 for *_, n in district.cells()), district.name


def test_scaling_below_one_per_district_keeps_one_device_of_every_kind_in_the_city() -> None:
    city = default_scenario()
    kinds = {(s, t, m) for d in city.districts for s, t, m, n in d.cells() if n > 0}
    cells = sum(1 for d in city.districts for *_, n in d.cells() if n > 0)
    assert len(kinds) < 40 < cells
    scaled = scale_scenario(city, 40)
    counts: dict[tuple[str, str, str | None], int] = {}
    for d in scaled.districts:
        for s, t, m, n in d.cells():
            counts[(s, t, m)] = counts.get((s, t, m), 0) + n
    assert {k for k, n in counts.items() if n > 0} == kinds
    assert scaled.device_count == 40


def test_scaling_to_the_same_size_changes_nothing() -> None:
    scenario = default_scenario()
    assert scale_scenario(scenario, scenario.device_count) == scenario


def test_scaling_to_zero_devices_is_refused() -> None:
    with pytest.raises(ScenarioError, match="at least 1"):
        scale_scenario(default_scenario(), 0)
