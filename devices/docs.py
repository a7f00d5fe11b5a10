"""Render the device catalog as Markdown (docs/devices.md is generated from it)."""

from __future__ import annotations

import math

from devices.catalog import DEVICE_TYPES, MEDIA, Kind, MetricSpec, default_service


def render() -> str:
    """The whole of docs/devices.md."""
    out = [
        "# Device catalog v1",
        "",
        "Generated from `devices/catalog.py` by `silobreak docs devices`; do not edit by hand.",
        "",
        'Devices publish JSON `{"ts": ..., "seq": ..., "metrics": {...}}` or a SenML (RFC 8428)',
        "array on `devices/{device_id}/telemetry`. A message may carry any subset of its type's",
        "metrics, but not none; one unknown metric or out-of-range value rejects the whole message",
        "(`schema_violation`). Ranges include their bounds. The device's type and owning service",
        "come from the registry, never from the topic or the payload.",
        "",
    ]
    for dtype in DEVICE_TYPES.values():
        out += [
            f"## `{dtype.name}`",
            "",
            dtype.description,
            "",
            f"Default owning service: `{_services(dtype.name)}`."
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


def _services(device_type: str) -> str:
    if device_type == "meter":
        return ", ".join(f"{default_service('meter', m)} ({m})" for m in MEDIA)
    return default_service(device_type)


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
    return f"| `{m.name}` | {m.kind.value} | {unit} | {rng} | {m.description} |"


def _range(lo: float, hi: float) -> str:
    if math.isinf(hi):
        return f">= {lo:g}"
    return f"{lo:g} to {hi:g}"
