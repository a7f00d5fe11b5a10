"""The fleet: device ids, registry records, placement."""

from __future__ import annotations

import re

from devices.catalog import default_service
from devices.registry import record_problem
from firmware_sim import build_fleet, default_scenario


def test_device_ids_are_deterministic_readable_and_valid() -> None:
    first = build_fleet(default_scenario())
    again = build_fleet(default_scenario())
    ids = [d.device_id for d in first.devices]
    assert ids == [d.device_id for d in again.devices]
    assert len(set(ids)) == len(ids)
    assert "grenoble-air-centre-0001" in ids
    assert "grenoble-meter-water-villeneuve-0110" in ids
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,64}", i) for i in ids)


def test_every_record_is_a_valid_registry_record_with_its_owner() -> None:
    fleet = build_fleet(default_scenario())
    for record in fleet.records():
        assert record_problem(record) is None
        assert record.service == default_service(record.device_type, record.medium)
        assert record.installed_at is not None
        assert (record.medium is not None) == (record.device_type == "meter")


def test_every_device_stands_inside_its_district() -> None:
    scenario = default_scenario()
    boxes = {d.name: d.bbox for d in scenario.districts}
    for record in build_fleet(scenario).records():
        assert record.district is not None and record.lat is not None and record.lon is not None
        south, west, north, east = boxes[record.district]
        assert south <= record.lat <= north
        assert west <= record.lon <= east


def test_the_seed_changes_placement_but_not_ids() -> None:
    one = build_fleet(default_scenario(), seed=1)
    two = build_fleet(default_scenario(), seed=2)
    assert [d.device_id for d in one.devices] == [d.device_id for d in two.devices]
    assert [d.record.lat for d in one.devices] != [d.record.lat for d in two.devices]
