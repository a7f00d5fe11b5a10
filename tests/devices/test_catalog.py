"""The device catalog as data: the shipped file, an operator's file, and what is refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from devices.catalog import (
    DEVICE_TYPES,
    MEDIA,
    PHASE_CODES,
    SHIPPED,
    Aggregation,
    Kind,
    activated,
    catalog_from_document,
    configured_catalog,
    default_service,
    load_catalog,
)
from devices.errors import CatalogError, DevicesError
from devices.registry import new_record

BIN = """
[[types]]
name = "waste_bin"
service = "cleansing"
description = "A litter bin."
[[types.metrics]]
name = "fill_pct"
kind = "number"
min = 0
max = 100
description = "Fill level."
"""


def test_the_shipped_file_holds_catalog_v1_and_the_two_types_added_since() -> None:
    assert list(SHIPPED.types) == [
        "streetlight", "traffic_light", "air_sensor", "meter", "noise_sensor", "parking_bay",
    ]  # fmt: skip
    assert dict(PHASE_CODES) == {"red": 0, "amber": 1, "green": 2, "flashing_amber": 3, "off": 4}
    assert MEDIA == ("electricity", "water", "gas", "heat")
    assert default_service("meter", "water") == "water"
    assert default_service("meter") == "energy"
    lamp = SHIPPED.types["streetlight"].metric("lamp_on")
    assert lamp is not None and (lamp.kind, lamp.minimum, lamp.maximum) == (Kind.BOOL, 0, 1)
    index = SHIPPED.types["meter"].metric("index")
    assert index is not None and index.maximum == math.inf and index.unit_for("water") == "m³"
    assert SHIPPED.types["meter"].personal_data_default
    laeq = SHIPPED.types["noise_sensor"].metric("laeq")
    assert laeq is not None and laeq.aggregation is Aggregation.ENERGY_MEAN
    assert laeq.unit == "dB(A)"
    assert SHIPPED.types["air_sensor"].chunk_interval.days == 7


def test_an_operators_file_adds_its_types_after_the_shipped_ones(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(BIN, encoding="utf-8")
    catalog = configured_catalog(path)
    assert list(catalog.types)[-1] == "waste_bin"
    assert "waste_bin" not in DEVICE_TYPES
    with pytest.raises(DevicesError, match="unknown device_type 'waste_bin'"):
        new_record("b1", "waste_bin")
    with activated(catalog):
        assert new_record("b1", "waste_bin").service == "cleansing"
    assert "waste_bin" not in DEVICE_TYPES
    # The recorded document reads back as the same catalog.
    assert catalog_from_document(catalog.document).types == catalog.types


def test_a_file_that_repeats_a_shipped_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(BIN.replace("waste_bin", "meter"), encoding="utf-8")
    with pytest.raises(CatalogError, match="device type 'meter' is already in the catalog"):
        configured_catalog(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "number"', 'kind = "float"'), "types.0.metrics.0.kind"),
        (("max = 100", "max = -1"), "min is above max"),
        (('kind = "number"\nmin = 0\nmax = 100', 'kind = "enum"'), "an enum needs codes"),
        (('name = "fill_pct"', 'name = "time"'), "a column of every table"),
        (('name = "waste_bin"', 'name = "Waste Bin"'), "types.0.name"),
        (('service = "cleansing"', 'colour = "green"'), "types.0.service"),
    ],
)
def test_a_bad_catalog_file_is_one_error_naming_the_field(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BIN.replace(*change), encoding="utf-8")
    with pytest.raises(CatalogError, match=message) as err:
        load_catalog(path)
    assert str(err.value).startswith(f"catalog {path}: ")
    assert "\n" not in str(err.value)


def test_a_missing_or_broken_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="No such file"):
        load_catalog(tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("[[types]\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="not valid TOML"):
        load_catalog(tmp_path / "broken.toml")
