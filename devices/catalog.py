"""The device catalog: device types, their metrics, units, ranges and codes, read from data.

The shipped catalog is `devices/catalog.toml`; an operator's file (SILOBREAK_CATALOG) adds
types to it. `DEVICE_TYPES` is the active catalog's types: the shipped one at import, and in
a platform process the one `silobreak migrate` recorded in the database (`activate`), so that
every process reads the same catalog.
"""

from __future__ import annotations

import enum
import json
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from devices.errors import CatalogError


class Kind(enum.Enum):
    """How a metric's JSON value is read and stored."""

    NUMBER = "number"  # any finite number within the range
    WHOLE = "whole"  # a number with no fractional part (5 or 5.0, not 5.5)
    BOOL = "bool"  # JSON true/false, stored 1/0
    ENUM = "enum"  # a name or its code, stored as the code


class Aggregation(enum.Enum):
    """How a metric's values are averaged over a bucket or a pool of devices."""

    MEAN = "mean"  # the arithmetic mean
    # Sound levels in dB: 10·log10(mean(10^(L/10))), the level of the mean sound energy.
    ENERGY_MEAN = "energy_mean"


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
    # Meters take their unit from the registry's `medium`; None means "one unit".
    unit_by_medium: MappingProxyType[str, str] | None = None
    aggregation: Aggregation = Aggregation.MEAN

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
    # How often a device of this type reports by default (the simulator's interval).
    interval: timedelta = timedelta(minutes=5)
    # The time span of one TimescaleDB chunk of its readings (docs/store.md).
    chunk_interval: timedelta = timedelta(days=1)
    # The default owner by the registry's `medium` (meters); empty: always default_service.
    service_by_medium: MappingProxyType[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )
    _index: Mapping[str, MetricSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {m.name: m for m in self.metrics})

    def metric(self, name: str) -> MetricSpec | None:
        return self._index.get(name)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)

    @property
    def media(self) -> tuple[str, ...]:
        return tuple(self.service_by_medium)


@dataclass(frozen=True, slots=True)
class Catalog:
    """A whole catalog: its types in order, and the document it was read from."""

    types: MappingProxyType[str, DeviceType]
    # The validated document, as `silobreak migrate` records it in the database.
    document: Mapping[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.document, sort_keys=True, ensure_ascii=False)

    def extended(self, other: Catalog) -> Catalog:
        """This catalog with `other`'s types added after its own."""
        clash = [name for name in other.types if name in self.types]
        if clash:
            raise CatalogError(f"device type {clash[0]!r} is already in the catalog")
        types = [*self.document["types"], *other.document["types"]]
        return catalog_from_document({"types": types})


def catalog_from_document(doc: object, *, source: str = "catalog") -> Catalog:
    """Validate a catalog document (a parsed TOML file, or one recorded in the database)."""
    try:
        parsed = _CatalogDoc.model_validate(doc)
    except ValidationError as exc:
        raise CatalogError(f"{source}: {_first_error(exc)}") from None
    types = MappingProxyType({t.name: t.build() for t in parsed.types})
    # Every field, defaults included: the recorded document means the same to a later version.
    return Catalog(types, parsed.model_dump(mode="json"))


def load_catalog(path: Path) -> Catalog:
    """Read one catalog file (TOML)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"catalog {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {path}: not valid TOML ({exc})") from None
    return catalog_from_document(doc, source=f"catalog {path}")


def configured_catalog(extra: Path | None) -> Catalog:
    """The shipped catalog, plus the operator's types from `extra` (SILOBREAK_CATALOG)."""
    return SHIPPED if extra is None else SHIPPED.extended(load_catalog(extra))


def active() -> Catalog:
    """The catalog this process reads (the shipped one unless `activate` was called)."""
    return _active[0]


def activate(catalog: Catalog) -> None:
    """Make `catalog` the one this process reads (at start-up: the database's)."""
    _active[0] = catalog


@contextmanager
def activated(catalog: Catalog) -> Iterator[Catalog]:
    """`activate` for a block, then the previous catalog again (tests, one-off commands)."""
    before = _active[0]
    _active[0] = catalog
    try:
        yield catalog
    finally:
        _active[0] = before


def default_service(device_type: str, medium: str | None = None) -> str:
    """The service that owns a device of this type when none is given."""
    dtype = DEVICE_TYPES[device_type]
    if medium is not None:
        return dtype.service_by_medium.get(medium, dtype.default_service)
    return dtype.default_service


class _ActiveTypes(Mapping[str, DeviceType]):
    """The active catalog's types, looked up at each use."""

    def __getitem__(self, name: str) -> DeviceType:
        return _active[0].types[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_active[0].types)

    def __len__(self) -> int:
        return len(_active[0].types)

    def __repr__(self) -> str:
        return f"DEVICE_TYPES({', '.join(self)})"


# -- the file format ------------------------------------------------------------------------

_STRICT: Final = ConfigDict(extra="forbid", frozen=True)
# Names become SQL identifiers (`readings_<type>`, `<metric>_count`, ...) within PostgreSQL's
# 63 bytes: the longest prefix is `silobreak_refresh_rollups_` (26), the longest suffix `_count`.
TypeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,29}$")]
MetricName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
Text = Annotated[str, Field(max_length=200)]
_DURATION_RE: Final = re.compile(r"([1-9][0-9]{0,5})(s|m|h|d)")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Columns every readings table has; a metric may not take their names.
_RESERVED_METRICS: Final = frozenset({"time", "device_id", "service", "batch", "bucket"})


class _MetricDoc(BaseModel):
    model_config = _STRICT

    name: MetricName
    kind: Literal["number", "whole", "bool", "enum"]
    description: Text
    unit: Text = ""
    unit_by_medium: dict[str, Text] | None = None
    min: float | None = None
    max: float | None = None
    codes: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")], int] | None = None
    aggregation: Literal["mean", "energy_mean"] = "mean"

    @model_validator(mode="after")
    def _consistent(self) -> _MetricDoc:
        if self.name in _RESERVED_METRICS:
            raise ValueError(f"metric {self.name!r}: the name is a column of every table")
        if self.kind == "enum":
            if not self.codes:
                raise ValueError(f"metric {self.name!r}: an enum needs codes")
            if len(set(self.codes.values())) != len(self.codes):
                raise ValueError(f"metric {self.name!r}: two names share a code")
            if not all(0 <= c <= 32767 for c in self.codes.values()):
                raise ValueError(f"metric {self.name!r}: codes are 0 to 32767 (smallint)")
        elif self.codes:
            raise ValueError(f"metric {self.name!r}: only an enum has codes")
        if self.kind in ("bool", "enum") and (self.min is not None or self.max is not None):
            raise ValueError(f"metric {self.name!r}: a {self.kind} has no min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"metric {self.name!r}: min is above max")
        return self

    def build(self) -> MetricSpec:
        lo, hi = self.min, self.max
        if self.kind == "bool":
            lo, hi = 0, 1
        elif self.kind == "enum":
            assert self.codes is not None
            lo, hi = 0, max(self.codes.values())
        return MetricSpec(
            self.name,
            Kind(self.kind),
            self.unit,
            self.description,
            -math.inf if lo is None else lo,
            math.inf if hi is None else hi,
            MappingProxyType(dict(self.codes or {})),
            None if self.unit_by_medium is None else MappingProxyType(dict(self.unit_by_medium)),
            Aggregation(self.aggregation),
        )


class _TypeDoc(BaseModel):
    model_config = _STRICT

    name: TypeName
    service: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
    description: Text
    personal_data: bool = False
    interval: Annotated[str, Field(pattern=_DURATION_RE.pattern)] = "5m"
    chunk_interval: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,2}d$")] = "1d"
    service_by_medium: dict[str, Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]] = {}
    metrics: Annotated[list[_MetricDoc], Field(min_length=1, max_length=100)]

    @model_validator(mode="after")
    def _unique_metrics(self) -> _TypeDoc:
        names = [m.name for m in self.metrics]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"type {self.name!r}: metric {dup!r} twice")
        return self

    def build(self) -> DeviceType:
        return DeviceType(
            name=self.name,
            default_service=self.service,
            description=self.description,
            metrics=tuple(m.build() for m in self.metrics),
            personal_data_default=self.personal_data,
            interval=_duration(self.interval),
            chunk_interval=_duration(self.chunk_interval),
            service_by_medium=MappingProxyType(dict(self.service_by_medium)),
        )


class _CatalogDoc(BaseModel):
    model_config = _STRICT

    types: Annotated[list[_TypeDoc], Field(min_length=1, max_length=200)]

    @model_validator(mode="after")
    def _unique_types(self) -> _CatalogDoc:
        names = [t.name for t in self.types]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"device type {dup!r} twice")
        return self


def _duration(text: str) -> timedelta:
    match = _DURATION_RE.fullmatch(text)
    assert match is not None  # the field's pattern
    return timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


SHIPPED: Final = load_catalog(Path(str(resources.files("devices") / "catalog.toml")))
_active: list[Catalog] = [SHIPPED]
DEVICE_TYPES: Final[Mapping[str, DeviceType]] = _ActiveTypes()

# Constants of the shipped types that code refers to by name.
METER: Final = SHIPPED.types["meter"]
PHASE_CODES: Final = SHIPPED.types["traffic_light"].metrics[0].codes
MEDIA: Final = METER.media
METER_SERVICE_BY_MEDIUM: Final = METER.service_by_medium
