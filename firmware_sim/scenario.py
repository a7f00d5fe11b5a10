"""The scenario file: a city, its districts, its fleet, publish intervals and fault rates."""

from __future__ import annotations

import logging
import math
import re
import tomllib
import unicodedata
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from devices.catalog import DEVICE_TYPES, MEDIA, METER
from devices.topics import SERVICE_RE
from firmware_sim.errors import ScenarioError

logger = logging.getLogger(__name__)

Slug = Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$", max_length=20)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Count = Annotated[int, Field(ge=0, le=99_999)]
# A published reading per second per device is already 100x a real streetlight's rate.
Seconds = Annotated[float, Field(ge=1.0, le=86_400.0)]
# device type -> count, or for meters medium -> count
TypeCounts = dict[str, Count | dict[str, Count]]

_STRICT: Final = ConfigDict(extra="forbid", frozen=True)
_DEFAULT_FILE: Final = "default.toml"


class City(BaseModel):
    model_config = _STRICT

    name: Annotated[str, Field(min_length=1, max_length=60)]
    # Prefix of every device id; derived from the name when not given ("Saint-Étienne" ->
    # "saint-etienne").
    slug: Slug
    lat: Annotated[float, Field(ge=-90.0, le=90.0)]
    lon: Annotated[float, Field(ge=-180.0, le=180.0)]
    timezone: str

    @model_validator(mode="before")
    @classmethod
    def _derive_slug(cls, data: object) -> object:
        if isinstance(data, dict) and "slug" not in data and isinstance(data.get("name"), str):
            return {**data, "slug": _slugify(data["name"])}
        return data

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r} (e.g. 'Europe/Paris')") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class District(BaseModel):
    model_config = _STRICT

    name: Slug
    # south, west, north, east in degrees
    bbox: tuple[float, float, float, float]
    # Relative road traffic (1 = city average); it scales vehicle counts and traffic pollution.
    traffic_factor: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    # service -> device type -> count (meters: medium -> count)
    devices: dict[str, TypeCounts] = Field(default_factory=dict)

    @field_validator("bbox")
    @classmethod
    def _sane_box(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        south, west, north, east = box
        if not (-90.0 <= south < north <= 90.0):
            raise ValueError("bbox is [south, west, north, east]: need -90 <= south < north <= 90")
        if not (-180.0 <= west < east <= 180.0):
            raise ValueError("bbox is [south, west, north, east]: need -180 <= west < east <= 180")
        return box

    @field_validator("devices")
    @classmethod
    def _known_kinds(cls, devices: dict[str, TypeCounts]) -> dict[str, TypeCounts]:
        for service, counts in devices.items():
            if SERVICE_RE.fullmatch(service) is None:
                raise ValueError(f"service {service!r} must match [a-z][a-z0-9_-]*")
            for type_name, count in counts.items():
                _check_type_count(service, type_name, count)
        return devices

    def cells(self) -> list[tuple[str, str, str | None, int]]:
        """(service, device_type, medium, count) in file order."""
        out: list[tuple[str, str, str | None, int]] = []
        for service, counts in self.devices.items():
            for type_name, count in counts.items():
                if isinstance(count, dict):
                    out.extend((service, type_name, medium, n) for medium, n in count.items())
                else:
                    out.append((service, type_name, None, count))
        return out


class Intervals(BaseModel):
    """Seconds between two telemetry messages of one device, per device type."""

    model_config = _STRICT

    streetlight: Seconds = 300.0
    traffic_light: Seconds = 60.0
    air_sensor: Seconds = 120.0
    meter: Seconds = 900.0
    noise_sensor: Seconds = 60.0
    parking_bay: Seconds = 300.0

    def of(self, device_type: str) -> float:
        value: float | None = getattr(self, device_type, None)
        if value is None:  # a type of the operator's catalog: its default interval
            return DEVICE_TYPES[device_type].interval.total_seconds()
        return value


class Faults(BaseModel):
    """Fault rates; see each field for what it is a fraction of."""

    model_config = _STRICT

    # Share of device-time spent in the fault (episodes of a fixed length, see faults.py).
    lamp_failure: Rate = 0.02
    traffic_flashing: Rate = 0.01
    traffic_dark: Rate = 0.005
    sensor_drift: Rate = 0.05
    stuck_value: Rate = 0.01
    meter_leak: Rate = 0.02
    # Expected replacements per meter per year.
    meter_replacement: Annotated[float, Field(ge=0.0, le=12.0)] = 0.05
    # Share of readings whose payload is broken, out of range, or published twice.
    malformed_payload: Rate = 0.005
    out_of_range: Rate = 0.005
    duplicate_publish: Rate = 0.01
    # Share of devices whose clock is off by up to clock_skew_max_s (either way).
    clock_skew: Rate = 0.05
    # Ingest accepts up to 5 minutes into the future; 60 s leaves room for real clocks.
    clock_skew_max_s: Annotated[float, Field(gt=0.0, le=60.0)] = 60.0
    # Share of devices sending SenML (RFC 8428) arrays instead of JSON objects.
    senml_share: Rate = 0.1
    # Share of devices sending enumerations as codes rather than names (not a fault).
    enum_code_share: Rate = 0.25

    @model_validator(mode="after")
    def _exclusive_rates_fit(self) -> Self:
        if self.malformed_payload + self.out_of_range > 1.0:
            raise ValueError("malformed_payload + out_of_range must not exceed 1")
        if self.traffic_flashing + self.traffic_dark > 1.0:
            raise ValueError("traffic_flashing + traffic_dark must not exceed 1")
        return self


class Streetlights(BaseModel):
    """The night dimming schedule: full power from dusk, dimmed from dim_from to dim_to."""

    model_config = _STRICT

    dim_from: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "23:00"
    dim_to: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")] = "05:00"
    dim_level: Annotated[float, Field(ge=0.0, le=100.0)] = 50.0

    def hours(self) -> tuple[float, float]:
        return _hours(self.dim_from), _hours(self.dim_to)


class Scenario(BaseModel):
    model_config = _STRICT

    city: City
    districts: Annotated[list[District], Field(min_length=1)]
    intervals: Intervals = Intervals()
    faults: Faults = Faults()
    streetlights: Streetlights = Streetlights()
    # Devices are installed (start publishing) on a date drawn between these two.
    installed_between: tuple[date, date] = (date(2023, 1, 1), date(2025, 1, 1))
    seed: int = 0

    @model_validator(mode="after")
    def _unique_districts(self) -> Self:
        names = [d.name for d in self.districts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"district names must be unique: {', '.join(twice)} repeated")
        first, last = self.installed_between
        if first > last:
            raise ValueError("installed_between must be [earliest, latest]")
        return self

    @property
    def device_count(self) -> int:
        return sum(n for d in self.districts for *_, n in d.cells())

    def installed_range(self) -> tuple[datetime, datetime]:
        first, last = self.installed_between
        return (
            datetime(first.year, first.month, first.day, tzinfo=UTC),
            datetime(last.year, last.month, last.day, tzinfo=UTC),
        )


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file; ScenarioError names the file and each problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"scenario {str(path)!r}: cannot read: {exc.strerror}") from exc
    return parse_scenario(text, source=str(path))


def parse_scenario(text: str, *, source: str = "<scenario>") -> Scenario:
    """Validate scenario TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {source!r}: not valid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise ScenarioError(f"scenario {source!r}: {problems}") from None


def default_scenario() -> Scenario:
    """The shipped Grenoble-like city (firmware_sim/scenarios/default.toml)."""
    return shipped_scenario(_DEFAULT_FILE.removesuffix(".toml"))


def shipped_scenario(name: str) -> Scenario:
    """A scenario shipped in firmware_sim/scenarios/ (`default`, and the demo region's
    neighbouring communes `echirolles` and `eybens`)."""
    file = f"{name}.toml"
    entry = resources.files("firmware_sim").joinpath("scenarios", file)
    if not entry.is_file():
        raise ScenarioError(f"no shipped scenario {name!r}")
    return parse_scenario(entry.read_text("utf-8"), source=f"firmware_sim/scenarios/{file}")


def scale_scenario(scenario: Scenario, devices: int) -> Scenario:
    """The same city with `devices` devices in total, every count scaled in proportion.

    Largest-remainder rounding keeps the total exact and the result deterministic.
    """
    total = scenario.device_count
    if devices < 1:
        raise ScenarioError(f"--devices must be at least 1, got {devices}")
    if total == 0:
        raise ScenarioError("the scenario has no devices to scale")
    cells = [(i, c) for i, d in enumerate(scenario.districts) for c in d.cells()]
    sizes = [n for _, (*_, n) in cells]
    # Every kind of device keeps at least one member when there is room, so a small city
    # still has an air sensor next to its traffic lights: one in each district when the
    # devices allow, else one city-wide (in the district that has the most of them).
    largest: dict[tuple[str, str, str | None], int] = {}
    for j, (_, (service, type_name, medium, n)) in enumerate(cells):
        kind = (service, type_name, medium)
        if n > 0 and (kind not in largest or n > sizes[largest[kind]]):
            largest[kind] = j
    per_district = sum(1 for n in sizes if n > 0) <= devices < total
    per_city = not per_district and len(largest) <= devices < total
    firsts = set(largest.values())
    base = [
        1 if (per_district and n > 0) or (per_city and j in firsts) else 0
        for j, n in enumerate(sizes)
    ]
    spread = devices - sum(base)
    exact = [b + n * spread / total for b, n in zip(base, sizes, strict=True)]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(cells)), key=lambda j: (-(exact[j] - counts[j]), j))
    for j in by_remainder[: devices - sum(counts)]:
        counts[j] += 1
    districts = []
    for i, district in enumerate(scenario.districts):
        new: dict[str, TypeCounts] = {}
        for (owner, (service, type_name, medium, _)), n in zip(cells, counts, strict=True):
            if owner != i:
                continue
            per_type = new.setdefault(service, {})
            if medium is None:
                per_type[type_name] = n
            else:
                media = per_type.setdefault(type_name, {})
                assert isinstance(media, dict)
                media[medium] = n
        districts.append(district.model_copy(update={"devices": new}))
    return scenario.model_copy(update={"districts": districts})


def _check_type_count(service: str, type_name: str, count: int | dict[str, int]) -> None:
    if type_name not in DEVICE_TYPES:
        raise ValueError(
            f"{service}: unknown device type {type_name!r} (one of {', '.join(DEVICE_TYPES)})"
        )
    if type_name == METER.name:
        if not isinstance(count, dict):
            raise ValueError(f"{service}.meter: give counts per medium, e.g. {{ water = 100 }}")
        unknown = [m for m in count if m not in MEDIA]
        if unknown:
            raise ValueError(
                f"{service}.meter: unknown medium {unknown[0]!r} (one of {', '.join(MEDIA)})"
            )
    elif isinstance(count, dict):
        raise ValueError(f"{service}.{type_name}: give one count, e.g. {type_name} = 10")


def _slugify(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:20].strip("-")


def _hours(hhmm: str) -> float:
    hours, minutes = hhmm.split(":")
    return int(hours) + int(minutes) / 60.0
