"""Render the device catalog as Markdown (docs/devices.md is generated from it)."""

from __future__ import annotations

import math

from devices.catalog import DEVICE_TYPES, Aggregation, DeviceType, Kind, MetricSpec


def render() -> str:
    """The whole of docs/devices.md."""
    out = [
        "# Device catalog",
        "",
        "Generated from `devices/catalog.toml` by `silobreak docs devices`; do not edit by hand.",
        "Catalog v1 is the first four types; later types are added the same way an operator adds",
        'one (docs/store.md, "Device types as data").',
        "",
        'Devices publish JSON `{"ts": ..., "seq": ..., "metrics": {...}}` or a SenML (RFC 8428)',
        "array on `devices/{device_id}/telemetry`. A message may carry any subset of its type's",
        "metrics, but not none; one unknown metric or out-of-range value rejects the whole message",
        "(`schema_violation`). Ranges include their bounds. The device's type and owning service",
        "come from the registry, never from the topic or the payload.",
        "",
        "In SenML, a record's name (after its base name, up to the last `:` or `/`) is the metric;",
        "base time, base value and base sum carry forward and are added to each record's time,",
        "value (`v`) and sum (`s`) as RFC 8428 section 4.3 says; `vb` and `vs` take booleans and",
        "enumeration names.",
        "",
    ]
    for dtype in DEVICE_TYPES.values():
        out += [
            f"## `{dtype.name}`",
            "",
            dtype.description,
            "",
            f"Default owning service: {_services(dtype)}."
            f" Reports every {_every(dtype)} by default."
            + (
                " Personal data by default (shared only as pooled aggregates)."
                if dtype.personal_data_default
                else ""
            ),
            "",
            "| metric | type | unit | valid range | description |",
            "|---|---|---|---|---|",
        ]
        out += [_row(m) for m in dtype.metrics]
        out.append("")
    out += [
        "## Value rules",
        "",
        "- `number`: a finite JSON number; NaN and infinities are a `schema_violation`.",
        "- `whole`: a number with no fractional part (`5` or `5.0`, not `5.5`).",
        "- `bool`: JSON `true` / `false`, stored as 1 / 0.",
        "- `enum`: the name or its code, stored as the code.",
        "- `ts`: ISO 8601 with a UTC offset, or epoch milliseconds; missing: the receive time.",
        "",
    ]
    return "\n".join(out)


def _services(dtype: DeviceType) -> str:
    if dtype.service_by_medium:
        return ", ".join(f"`{svc}` ({medium})" for medium, svc in dtype.service_by_medium.items())
    return f"`{dtype.default_service}`"


def _every(dtype: DeviceType) -> str:
    seconds = int(dtype.interval.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{unit}" if n == 1 else f"{n} {unit}s"
    return f"{seconds} s"


def _row(m: MetricSpec) -> str:
    if m.unit_by_medium is not None:
        unit = ", ".join(f"{u} ({medium})" for medium, u in m.unit_by_medium.items())
    else:
        unit = m.unit or "—"
    if m.kind is Kind.ENUM:
        rng = ", ".join(f"`{name}`={code}" for name, code in m.codes.items())
    elif m.kind is Kind.BOOL:
        rng = "`true`, `false`"
    else:
        rng = _range(m.minimum, m.maximum)
    mean = (
        " Averaged as sound energy (energy mean)."
        if m.aggregation is Aggregation.ENERGY_MEAN
        else ""
    )
    return f"| `{m.name}` | {m.kind.value} | {unit} | {rng} | {m.description}{mean} |"


def _range(lo: float, hi: float) -> str:
    if math.isinf(hi):
        return f">= {lo:g}"
    return f"{lo:g} to {hi:g}"
