"""Physical layout of readings: one wide table per device type, derived from the catalog."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from devices.catalog import Aggregation, Catalog, DeviceType, Kind, active

_SQL_TYPES: Final = {
    Kind.NUMBER: "float8",
    Kind.WHOLE: "int8",
    Kind.BOOL: "int2",
    Kind.ENUM: "int2",
}

# What the demo invites the user to type into psql: readings per service and device type.
TRY_QUERY: Final = "SELECT service, device_type, count(*) FROM readings GROUP BY 1, 2"


@dataclass(frozen=True, slots=True)
class ReadingsTable:
    """The table holding one device type's readings, and its COPY column types."""

    device_type: str
    name: str
    metric_columns: tuple[str, ...]
    metric_types: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """What the writer sends; `batch` is filled by the database (the writing transaction)."""
        return ("time", "device_id", "service", *self.metric_columns)

    @property
    def table_columns(self) -> tuple[str, ...]:
        return ("time", "device_id", "service", "batch", *self.metric_columns)

    @property
    def copy_types(self) -> tuple[str, ...]:
        return ("timestamptz", "text", "text", *self.metric_types)

    @property
    def column_list(self) -> str:
        """Columns quoted for SQL (`index` is a reserved word)."""
        return ", ".join(f'"{c}"' for c in self.columns)


class _ActiveTables(Mapping[str, ReadingsTable]):
    """The active catalog's readings tables (devices.catalog.activate), built once per catalog."""

    def __init__(self) -> None:
        self._for: Catalog | None = None
        self._tables: dict[str, ReadingsTable] = {}

    def _current(self) -> dict[str, ReadingsTable]:
        catalog = active()
        if catalog is not self._for:
            self._tables = {name: _table(t) for name, t in catalog.types.items()}
            self._for = catalog
        return self._tables

    def __getitem__(self, device_type: str) -> ReadingsTable:
        return self._current()[device_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


def _table(t: DeviceType) -> ReadingsTable:
    return ReadingsTable(
        device_type=t.name,
        name=f"readings_{t.name}",
        metric_columns=t.metric_names,
        metric_types=tuple(_SQL_TYPES[m.kind] for m in t.metrics),
    )


READINGS_TABLES: Final[Mapping[str, ReadingsTable]] = _ActiveTables()


def energy_metrics(device_type: str) -> frozenset[str]:
    """The type's sound levels: averaged as energy, their stored sums of 10^(L/10)
    (docs/store.md, "Sound levels average as energy")."""
    return frozenset(
        m.name
        for m in active().types[device_type].metrics
        if m.aggregation is Aggregation.ENERGY_MEAN
    )


def energy_weight(metric: str, energy: frozenset[str]) -> str:
    """SQL of a raw value's sound energy (`r.<metric>`), or NULL for other metrics."""
    return f'power(10, r."{metric}"::float8 / 10)' if metric in energy else "NULL::float8"


# Over unpivoted rows `m`: the energy mean where `m.w` (energy_weight) is set, else the mean.
RAW_AVG: Final = "coalesce(10 * log10(avg(m.w)), avg(m.v))"
# Over unpivoted aggregate rows `m` (sum s, count c, energy flag e): exact at any coarser step.
STORED_AVG: Final = (
    "CASE WHEN bool_and(m.e) THEN 10 * log10(sum(m.s) / nullif(sum(m.c), 0))"
    " ELSE sum(m.s) / nullif(sum(m.c), 0) END"
)
