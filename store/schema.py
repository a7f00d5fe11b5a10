"""Physical layout of readings: one wide table per device type, derived from the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from devices.catalog import DEVICE_TYPES, Kind

_SQL_TYPES: Final = {
    Kind.NUMBER: "float8",
    Kind.WHOLE: "int8",
    Kind.BOOL: "int2",
    Kind.ENUM: "int2",
}


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


def _table(device_type: str) -> ReadingsTable:
    t = DEVICE_TYPES[device_type]
    return ReadingsTable(
        device_type=device_type,
        name=f"readings_{device_type}",
        metric_columns=t.metric_names,
        metric_types=tuple(_SQL_TYPES[m.kind] for m in t.metrics),
    )


READINGS_TABLES: Final = MappingProxyType({name: _table(name) for name in DEVICE_TYPES})
