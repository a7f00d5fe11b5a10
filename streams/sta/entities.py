"""silobreak's model as SensorThings entities: a device is a Thing (and its Location), a
device type a Sensor, a catalog metric an ObservedProperty, a device's metric a Datastream
and a reading an Observation. Pure: registry rows and readings in, JSON out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from devices.catalog import DEVICE_TYPES, Kind, MetricSpec
from streams.cursor import from_micros, micros
from streams.errors import ApiError

# A registry row as store.query.devices() returns it.
DeviceRow = tuple[Any, ...]
_OM: Final = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
_OBSERVATION_TYPES: Final = {
    Kind.NUMBER: "OM_Measurement", Kind.WHOLE: "OM_CountObservation",
    Kind.BOOL: "OM_TruthObservation", Kind.ENUM: "OM_CategoryObservation",
}  # fmt: skip
# UCUM codes of the catalog's units (unitOfMeasurement.definition names the code).
_UCUM: Final = {
    "W": "W", "%": "%", "µg/m³": "ug/m3", "°C": "Cel", "kWh": "kW.h", "kW": "kW",
    "m³": "m3", "m³/h": "m3/h", "dB": "dB",
}  # fmt: skip
_UCUM_BASE: Final = "http://unitsofmeasure.org/ucum.html#"
THING_FIELDS: Final = frozenset({"@iot.id", "@iot.selfLink", "name", "description", "properties"})
LOCATION_FIELDS: Final = frozenset(
    {"@iot.id", "@iot.selfLink", "name", "description", "encodingType", "location"}
)
DATASTREAM_FIELDS: Final = frozenset(
    {"@iot.id", "@iot.selfLink", "name", "description", "unitOfMeasurement",
     "observationType", "properties"}
)  # fmt: skip
SENSOR_FIELDS: Final = frozenset(
    {"@iot.id", "@iot.selfLink", "name", "description", "encodingType", "metadata"}
)
PROPERTY_FIELDS: Final = frozenset(
    {"@iot.id", "@iot.selfLink", "name", "definition", "description"}
)
OBSERVATION_FIELDS: Final = frozenset(
    {"@iot.id", "@iot.selfLink", "phenomenonTime", "resultTime", "result"}
)
FEATURE_FIELDS: Final = frozenset(
    {"@iot.id", "@iot.selfLink", "name", "description", "encodingType", "feature"}
)


def link(base: str, entity_set: str, entity_id: str) -> str:
    """`{base}/Things('lamp-1')`: ids are OData string literals."""
    return f"{base}/{addressed(entity_set, entity_id)}"


def addressed(entity_set: str, entity_id: str) -> str:
    quoted = entity_id.replace("'", "''")
    return f"{entity_set}('{quoted}')"


def missing(entity_set: str, entity_id: str) -> ApiError:
    """The one answer for an id that does not exist and for one the caller may not see."""
    return ApiError(404, "not_found", f"no {addressed(entity_set, entity_id)}")


def thing(base: str, row: DeviceRow) -> dict[str, Any]:
    device_id, device_type, service, organisation, district = row[:5]
    self_link = link(base, "Things", device_id)
    kind = DEVICE_TYPES.get(device_type)
    return {
        "@iot.id": device_id,
        "@iot.selfLink": self_link,
        "name": device_id,
        "description": f"{kind.description if kind else device_type} {device_id}",
        "properties": {
            "organisation": organisation, "service": service, "district": district,
            "device_type": device_type,
        },
        "Locations@iot.navigationLink": f"{self_link}/Locations",
        "Datastreams@iot.navigationLink": f"{self_link}/Datastreams",
    }  # fmt: skip


def location(base: str, row: DeviceRow) -> dict[str, Any]:
    device_id, lat, lon = row[0], row[5], row[6]
    self_link = link(base, "Locations", device_id)
    return {
        "@iot.id": device_id,
        "@iot.selfLink": self_link,
        "name": f"position of {device_id}",
        "description": f"where {device_id} stands",
        "encodingType": "application/geo+json",
        "location": {"type": "Point", "coordinates": [lon, lat]},
        "Things@iot.navigationLink": f"{self_link}/Things",
    }


def feature_of_interest(base: str, row: DeviceRow) -> dict[str, Any]:
    """What a device's readings are about: where it stands (a point), or, for a device with no
    position, its district (a GeoJSON feature with no geometry)."""
    device_id, district, lat, lon = row[0], row[4], row[5], row[6]
    self_link = link(base, "FeaturesOfInterest", device_id)
    feature: dict[str, Any] = (
        {"type": "Point", "coordinates": [lon, lat]}
        if lat is not None and lon is not None
        else {"type": "Feature", "geometry": None, "properties": {"district": district}}
    )
    return {
        "@iot.id": device_id,
        "@iot.selfLink": self_link,
        "name": f"surroundings of {device_id}",
        "description": f"what {device_id} measures, in district {district or 'unknown'}",
        "encodingType": "application/geo+json",
        "feature": feature,
        "Observations@iot.navigationLink": f"{self_link}/Observations",
    }


def datastream_id(device_id: str, metric: str) -> str:
    return f"{device_id}:{metric}"


def split_datastream(text: str) -> tuple[str, str]:
    device_id, sep, metric = text.rpartition(":")
    if not sep:
        raise missing("Datastreams", text)
    return device_id, metric


def datastream(base: str, row: DeviceRow) -> dict[str, Any]:
    device_id, device_type, service, medium, metric = row[0], row[1], row[2], row[7], row[8]
    spec = _spec(device_type, metric)
    unit = spec.unit_for(medium) if spec else ""
    self_link = link(base, "Datastreams", datastream_id(device_id, metric))
    return {
        "@iot.id": datastream_id(device_id, metric),
        "@iot.selfLink": self_link,
        "name": f"{metric} of {device_id}",
        "description": spec.description if spec else metric,
        "unitOfMeasurement": {
            "name": unit, "symbol": unit,
            "definition": _UCUM_BASE + _UCUM[unit] if unit in _UCUM else "",
        },
        "observationType": _OM + _OBSERVATION_TYPES[spec.kind if spec else Kind.NUMBER],
        "properties": {"device_type": device_type, "metric": metric, "service": service},
        "Thing@iot.navigationLink": f"{self_link}/Thing",
        "Sensor@iot.navigationLink": f"{self_link}/Sensor",
        "ObservedProperty@iot.navigationLink": f"{self_link}/ObservedProperty",
        "Observations@iot.navigationLink": f"{self_link}/Observations",
    }  # fmt: skip


def sensor(base: str, device_type: str) -> dict[str, Any]:
    kind = DEVICE_TYPES.get(device_type)
    self_link = link(base, "Sensors", device_type)
    return {
        "@iot.id": device_type,
        "@iot.selfLink": self_link,
        "name": device_type,
        "description": kind.description if kind else device_type,
        "encodingType": "text/plain",
        "metadata": f"silobreak device catalog: {device_type}",
        "Datastreams@iot.navigationLink": f"{self_link}/Datastreams",
    }


def observed_property_id(device_type: str, metric: str) -> str:
    return f"{device_type}:{metric}"


def observed_property(base: str, device_type: str, metric: str) -> dict[str, Any]:
    spec = _spec(device_type, metric)
    key = observed_property_id(device_type, metric)
    self_link = link(base, "ObservedProperties", key)
    return {
        "@iot.id": key,
        "@iot.selfLink": self_link,
        "name": metric,
        "definition": f"urn:silobreak:catalog:{device_type}:{metric}",
        "description": spec.description if spec else metric,
        "Datastreams@iot.navigationLink": f"{self_link}/Datastreams",
    }


def observation_id(device_id: str, metric: str, at: datetime) -> str:
    return f"{device_id}:{metric}:{micros(at)}"


def split_observation(text: str) -> tuple[str, str, datetime]:
    head, sep, at = text.rpartition(":")
    device_id, sep2, metric = head.rpartition(":")
    if not (sep and sep2 and at.isdigit()) or len(at) > 18:
        raise missing("Observations", text)
    try:
        return device_id, metric, from_micros(int(at))
    except OverflowError:  # past the year 9999: no reading is there
        raise missing("Observations", text) from None


def observation(
    base: str, device_type: str, device_id: str, metric: str, at: datetime, value: float
) -> dict[str, Any]:
    spec = _spec(device_type, metric)
    result: float | int | bool = value
    if spec is not None and spec.kind is Kind.BOOL:
        result = value != 0
    elif spec is not None and spec.kind in (Kind.WHOLE, Kind.ENUM):
        result = int(value)
    self_link = link(base, "Observations", observation_id(device_id, metric, at))
    when = iso(at)
    return {
        "@iot.id": observation_id(device_id, metric, at),
        "@iot.selfLink": self_link,
        "phenomenonTime": when,
        # A reading's result is known when it is taken: the device sends both as one time.
        "resultTime": when,
        "result": result,
        "Datastream@iot.navigationLink": f"{self_link}/Datastream",
    }


def render(base: str, entity_set: str, row: DeviceRow) -> dict[str, Any]:
    """A registry row as a Thing, a Location or (a row per metric) a Datastream."""
    if entity_set == "Things":
        return thing(base, row)
    if entity_set == "Locations":
        return location(base, row)
    if entity_set == "FeaturesOfInterest":
        return feature_of_interest(base, row)
    return datastream(base, row)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def selected(entity: dict[str, Any], select: tuple[str, ...] | None) -> dict[str, Any]:
    """`$select`: the named properties only (navigation links go with the entity otherwise)."""
    if select is None:
        return entity
    return {k: v for k, v in entity.items() if k in select}


def _spec(device_type: str, metric: str) -> MetricSpec | None:
    kind = DEVICE_TYPES.get(device_type)
    return kind.metric(metric) if kind else None
