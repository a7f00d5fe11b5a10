"""Registry records and CSV import: a file with any bad row imports nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.docs import render
from devices.errors import DevicesError, RegistryImportError
from devices.registry import new_record, parse_csv


def test_parse_csv_reads_columns_by_header_name() -> None:
    text = (
        "service,device_type,device_id,district,medium,lat,lon,colour\n"
        "water,meter,m-1,centre,water,45.19,5.72,blue\n"
        "lighting,streetlight,l-1,,,,,\n"
    )
    first, second = parse_csv(text)
    assert (first.device_id, first.device_type, first.service) == ("m-1", "meter", "water")
    assert first.medium == "water" and first.lat == 45.19 and first.district == "centre"
    assert first.attributes == {"colour": "blue"}
    assert first.is_personal_data
    assert second.district is None and not second.is_personal_data


def test_parse_csv_lists_every_bad_line_and_imports_nothing() -> None:
    text = (
        "device_id,device_type,service\n"
        "ok-1,air_sensor,environment\n"
        "bad-1,toaster,environment\n"
        "bad-2,air_sensor,\n"
        "bad id!,air_sensor,environment\n"
        "ok-1,air_sensor,environment\n"
    )
    with pytest.raises(RegistryImportError) as caught:
        parse_csv(text)
    lines = [line for line, _ in caught.value.problems]
    assert lines == [3, 4, 5, 6]
    assert "toaster" in str(caught.value) and "also on line 2" in str(caught.value)


def test_parse_csv_names_missing_required_columns() -> None:
    with pytest.raises(RegistryImportError, match=r"missing column.*service"):
        parse_csv("device_id,device_type\nx,meter\n")


def test_new_record_takes_the_types_default_service() -> None:
    assert new_record("a", "air_sensor").service == "environment"
    assert new_record("w", "meter", medium="water").service == "water"
    assert new_record("e", "meter").service == "energy"
    with pytest.raises(DevicesError, match="unknown device_type"):
        new_record("x", "toaster")
    with pytest.raises(DevicesError, match="device_id must match"):
        new_record("x" * 65, "meter")


def test_devices_doc_is_generated_from_the_catalog() -> None:
    committed = Path(__file__).parents[2] / "docs" / "devices.md"
    assert committed.read_text(encoding="utf-8") == render()
