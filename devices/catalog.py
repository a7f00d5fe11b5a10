"""Device catalog v1: the device types, their metrics, units, ranges and codes."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final


class Kind(enum.Enum):
    """How a metric's JSON value is read and stored."""

    NUMBER = "number"  # any finite number within the range
    WHOLE = "whole"  # a number with no fractional part (5 or 5.0, not 5.5)
    BOOL = "bool"  # JSON true/false, stored 1/0
    ENUM = "enum"  # a name or its code, stored as the code


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of a device type: its name, unit, valid range and storage."""

    name: str
    kind: Kind
    unit: str
    description: str
    minimum: float = -math.inf
    maximum: float = math.inf
    codes: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # Meters take their unit from the registry's `medium`; None means "see medium".
    unit_by_medium: MappingProxyType[str, str] | None = None

    def unit_for(self, medium: str | None) -> str:
        if self.unit_by_medium is not None and medium is not None:
            return self.unit_by_medium.get(medium, self.unit)
        return self.unit


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A device type: its name, default owning service and metrics in storage order."""

    name: str
    default_service: str
    description: str
    metrics: tuple[MetricSpec, ...]
    # Household meters carry personal data by default: the streams may only share them
    # as aggregates pooled over several devices.
    personal_data_default: bool = False

    def metric(self, name: str) -> MetricSpec | None:
        return _METRIC_INDEX[self.name].get(name)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)


PHASE_CODES: Final = MappingProxyType(
    {"red": 0, "amber": 1, "green": 2, "flashing_amber": 3, "off": 4}
)
MEDIA: Final = ("electricity", "water", "gas", "heat")
_INDEX_UNITS: Final = MappingProxyType(
    {"electricity": "kWh", "water": "m³", "gas": "m³", "heat": "kWh"}
)
_FLOW_UNITS: Final = MappingProxyType(
    {"electricity": "kW", "water": "m³/h", "gas": "m³/h", "heat": "kW"}
)
_POLLUTANT_MAX: Final = 2000.0

STREETLIGHT: Final = DeviceType(
    name="streetlight",
    default_service="lighting",
    description="A street lamp with a dimmable driver and a power meter.",
    metrics=(
        MetricSpec("lamp_on", Kind.BOOL, "", "Lamp switched on.", 0, 1),
        MetricSpec("dim_level", Kind.NUMBER, "%", "Dimming level of the driver.", 0, 100),
        MetricSpec("power_w", Kind.NUMBER, "W", "Electrical power drawn.", 0, 1000),
    ),
)
TRAFFIC_LIGHT: Final = DeviceType(
    name="traffic_light",
    default_service="mobility",
    description="A signalised intersection with a vehicle counter.",
    metrics=(
        MetricSpec(
            "phase", Kind.ENUM, "", "Signal phase.", 0, max(PHASE_CODES.values()), PHASE_CODES
        ),
        MetricSpec(
            "vehicle_count",
            Kind.WHOLE,
            "vehicles",
            "Vehicles through the intersection since the last message.",
            0,
        ),
    ),
)
AIR_SENSOR: Final = DeviceType(
    name="air_sensor",
    default_service="environment",
    description="An air-quality station: particulates, gases, temperature, humidity.",
    metrics=(
        MetricSpec("pm25", Kind.NUMBER, "µg/m³", "Fine particulates PM2.5.", 0, _POLLUTANT_MAX),
        MetricSpec("pm10", Kind.NUMBER, "µg/m³", "Particulates PM10.", 0, _POLLUTANT_MAX),
        MetricSpec("no2", Kind.NUMBER, "µg/m³", "Nitrogen dioxide.", 0, _POLLUTANT_MAX),
        MetricSpec("o3", Kind.NUMBER, "µg/m³", "Ozone.", 0, _POLLUTANT_MAX),
        MetricSpec("temperature_c", Kind.NUMBER, "°C", "Air temperature.", -50, 70),
        MetricSpec("humidity_pct", Kind.NUMBER, "%", "Relative humidity.", 0, 100),
    ),
)
METER: Final = DeviceType(
    name="meter",
    default_service="energy",
    description="A utility meter; its medium (electricity, water, gas, heat) is in the registry.",
    metrics=(
        MetricSpec(
            "index",
            Kind.NUMBER,
            "kWh",
            "Cumulative index.",
            0,
            unit_by_medium=_INDEX_UNITS,
        ),
        MetricSpec("flow", Kind.NUMBER, "kW", "Flow per hour.", 0, unit_by_medium=_FLOW_UNITS),
    ),
    personal_data_default=True,
)

DEVICE_TYPES: Final[MappingProxyType[str, DeviceType]] = MappingProxyType(
    {t.name: t for t in (STREETLIGHT, TRAFFIC_LIGHT, AIR_SENSOR, METER)}
)
# Water meters belong to the water service, every other medium to energy.
METER_SERVICE_BY_MEDIUM: Final = MappingProxyType(
    {"electricity": "energy", "gas": "energy", "heat": "energy", "water": "water"}
)

_METRIC_INDEX: Final = {t.name: {m.name: m for m in t.metrics} for t in DEVICE_TYPES.values()}


def default_service(device_type: str, medium: str | None = None) -> str:
    """The service that owns a device of this type when none is given."""
    if device_type == METER.name and medium is not None:
        return METER_SERVICE_BY_MEDIUM.get(medium, METER.default_service)
    return DEVICE_TYPES[device_type].default_service
