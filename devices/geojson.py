"""Registry import from GeoJSON: one Point feature per device, the CSV columns as properties."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

from devices.errors import DevicesError, RegistryImportError
from devices.registry import DeviceRecord, _row_record

# Shown in errors: the first bad features, and how many more there are.
_SHOWN: int = 20


class GeoJsonImportError(RegistryImportError):
    """A GeoJSON import with bad features; they are listed by feature number (from 1)."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        super().__init__(problems)
        shown = "; ".join(f"feature {n}: {why}" for n, why in problems[:_SHOWN])
        more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
        self.args = (f"{len(problems)} bad feature(s), nothing imported: {shown}{more}",)


def parse_geojson(text: str) -> list[DeviceRecord]:
    """A FeatureCollection of Point features whose properties hold `device_id`, `device_type`,
    `service` and optionally the other registry columns; any bad feature rejects the file."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise GeoJsonImportError([(0, f"not JSON: {exc}")]) from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise GeoJsonImportError([(0, "not a GeoJSON FeatureCollection")])
    features = doc.get("features")
    if not isinstance(features, list):
        raise GeoJsonImportError([(0, "the FeatureCollection has no features array")])
    records: list[DeviceRecord] = []
    problems: list[tuple[int, str]] = []
    first: dict[str, int] = {}
    for n, feature in enumerate(features, start=1):
        try:
            rec = replace(_feature_record(feature), source_line=n)
        except (DevicesError, ValueError) as exc:
            problems.append((n, str(exc)))
            continue
        if rec.device_id in first:
            problems.append((n, f"device {rec.device_id!r} also in feature {first[rec.device_id]}"))
            continue
        first[rec.device_id] = n
        records.append(rec)
    if problems:
        raise GeoJsonImportError(problems)
    return records


def _feature_record(feature: Any) -> DeviceRecord:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise DevicesError("not a GeoJSON Feature")
    props = feature.get("properties")
    if not isinstance(props, dict):
        raise DevicesError("a Feature needs a properties object")
    row = {str(k): _text(v) for k, v in props.items() if v is not None}
    geometry = feature.get("geometry")
    if geometry is not None:
        lon, lat = _point(geometry)
        row["lon"], row["lat"] = repr(lon), repr(lat)
    return _row_record(row)


def _point(geometry: Any) -> tuple[float, float]:
    if not isinstance(geometry, dict) or geometry.get("type") != "Point":
        raise DevicesError("geometry must be a Point (a device stands at one place)")
    coords = geometry.get("coordinates")
    if (
        not isinstance(coords, list)
        or len(coords) not in (2, 3)
        or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in coords)
        or not all(math.isfinite(c) for c in coords)
    ):
        raise DevicesError("Point coordinates must be [lon, lat] numbers")
    return float(coords[0]), float(coords[1])


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return json.dumps(value)
