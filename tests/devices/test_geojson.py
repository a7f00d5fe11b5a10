"""Registry import from GeoJSON: the CSV's rules, features numbered in errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devices.geojson import GeoJsonImportError, parse_geojson


def feature(props: dict[str, Any], coords: list[float] | None = None) -> dict[str, Any]:
    geometry = None if coords is None else {"type": "Point", "coordinates": coords}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def collection(*features: dict[str, Any]) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


def test_points_become_devices_with_lat_lon_and_attributes() -> None:
    text = collection(
        feature(
            {
                "device_id": "m-1",
                "device_type": "meter",
                "service": "water",
                "medium": "water",
                "floor": 3,
            },
            [5.72, 45.19],
        ),
        feature({"device_id": "l-1", "device_type": "streetlight", "service": "lighting"}),
    )
    meter, lamp = parse_geojson(text)
    assert (meter.lon, meter.lat, meter.medium) == (5.72, 45.19, "water")
    assert meter.attributes == {"floor": "3"}
    assert lamp.lat is None


def test_bad_features_are_listed_by_number_and_nothing_is_imported() -> None:
    text = collection(
        feature({"device_id": "ok", "device_type": "meter", "service": "energy"}),
        feature({"device_id": "b1", "device_type": "toaster", "service": "energy"}),
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": []},
         "properties": {"device_id": "b2", "device_type": "meter", "service": "energy"}},
        feature({"device_id": "ok", "device_type": "meter", "service": "energy"}),
    )  # fmt: skip
    with pytest.raises(GeoJsonImportError) as caught:
        parse_geojson(text)
    assert [n for n, _ in caught.value.problems] == [2, 3, 4]
    assert "feature 3: geometry must be a Point" in str(caught.value)


def test_a_file_that_is_not_a_feature_collection_says_so() -> None:
    with pytest.raises(GeoJsonImportError, match="FeatureCollection"):
        parse_geojson('{"type": "Feature"}')
    with pytest.raises(GeoJsonImportError, match="not JSON"):
        parse_geojson("{")
