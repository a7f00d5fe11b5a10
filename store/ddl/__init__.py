"""Per-device-type SQL generated from the device catalog (the migrations' `{{section}}`s).

Migrations that hold something per device type are templates: `{{readings_tables}}` and the
like stand where each type's tables, views and functions go. `render` fills them for a
catalog (a fresh database); `added_types` gives what a database migrated for one catalog
needs to serve a larger one (new types' objects, the views and functions over every type
replaced, the registry's CHECK widened). docs/store.md, "Device types as data".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Final, Literal

from devices.catalog import DeviceType
from store.ddl import aggregates_plain, aggregates_timescale, governed, readings

Backend = Literal["plain", "timescale"]
Section = Callable[[Sequence[DeviceType], Backend], str]

SECTIONS: Final[dict[str, Section]] = {
    "device_type_list": lambda types, _: readings.device_type_list(types),
    "readings_tables": readings.tables,
    "readings_view": lambda types, _: readings.view(types),
    "retention_targets": readings.retention_targets,
    "rollup_state_rows": lambda types, _: aggregates_plain.state_rows(types),
    "rollups": lambda types, _: aggregates_plain.rollups(types),
    "refresh_all": lambda types, _: aggregates_plain.refresh_all(types),
    "chunk_intervals": lambda types, _: aggregates_timescale.chunk_intervals(types),
    "continuous_aggregates": lambda types, _: aggregates_timescale.continuous_aggregates(types),
    "refresh_policies": lambda types, _: aggregates_timescale.refresh_policies(types),
    "compression": lambda types, _: aggregates_timescale.compression(types),
    "governed_types": lambda types, _: governed.types(types),
    "governed_readings": lambda types, _: governed.readings(types),
    "drop_district_views": lambda types, _: governed.drop_district_views(types),
}
_MARKER: Final = re.compile(r"\{\{([a-z_]+)\}\}")


def render(template: str, types: Sequence[DeviceType], backend: Backend) -> str:
    """A migration's text with each `{{section}}` generated for `types`."""

    def fill(match: re.Match[str]) -> str:
        section = SECTIONS.get(match[1])
        if section is None:
            raise KeyError(f"unknown catalog section {{{{{match[1]}}}}}")
        return section(types, backend)

    return _MARKER.sub(fill, template)


def added_types(
    before: Sequence[DeviceType],
    after: Sequence[DeviceType],
    backend: Backend,
    *,
    district_views: bool = True,
) -> str:
    """SQL that takes a database from catalog `before` to `after` (types only added);
    `district_views`: the store still has 0031's per-type district pool views."""
    new = [t for t in after if t.name not in {b.name for b in before}]
    if not new:
        return ""
    parts = [
        readings.widen_check(after),
        readings.tables(new, backend),
        readings.view(after, replace=True),
    ]
    if backend == "plain":
        parts += [
            aggregates_plain.state_rows(new),
            aggregates_plain.rollups(new),
            aggregates_plain.refresh_all(after, replace=True),
        ]
    else:
        parts += [
            aggregates_timescale.chunk_intervals(new),
            aggregates_timescale.continuous_aggregates(new),
            aggregates_timescale.refresh_policies(new),
            aggregates_timescale.compression(new),
        ]
    parts += [
        readings.retention_targets(new, backend),
        governed.types(new, district_views=district_views),
        governed.readings(after, replace=True),
        governed.grant_viewers(new, district_views=district_views),
    ]
    return "\n\n".join(parts) + "\n"
