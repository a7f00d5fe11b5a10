"""What Grafana does to a PostgreSQL panel query before the database sees it.

Two steps, as in Grafana 11: the browser interpolates template variables (`$district`,
`${metric}`, `$__interval`, `$__interval_ms`), quoting the values of multi-value and "All"
variables as SQL literals; then the server expands the macros (`$__timeFilter(col)`,
`$__timeGroupAlias(col, 5m)`, ...) per pkg/tsdb/grafana-postgresql-datasource/macros.go, for a
datasource without the TimescaleDB option (the floor(extract(epoch ...)) form works on both
backends). Used by the tests that run every panel against a real store.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

_VARIABLE: Final = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]")
_MACRO: Final = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
_INTERVAL: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|M|y)")
_UNIT_S: Final = {
    "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000,
    "y": 31536000,
}  # fmt: skip


class MacroError(ValueError):
    """A query Grafana would refuse: an unknown macro or variable, a bad interval."""


@dataclass(frozen=True, slots=True)
class Context:
    """The dashboard state a query is interpolated in."""

    start: datetime
    end: datetime
    interval: str  # Grafana's $__interval, e.g. "30s", "5m", "1h"
    # Variable values: a list for multi-value (or "All") variables, a string otherwise.
    variables: Mapping[str, str | Sequence[str]] = field(default_factory=dict)


def interval_seconds(text: str) -> float:
    match = _INTERVAL.fullmatch(text.strip().strip("'"))
    if match is None:
        raise MacroError(f"cannot parse interval {text!r}")
    return float(match[1]) * _UNIT_S[match[2]]


def expand(sql: str, ctx: Context) -> str:
    """The SQL Grafana sends for `sql` in `ctx`."""
    return _macros(_variables(sql, ctx), ctx)


def _variables(sql: str, ctx: Context) -> str:
    builtins = {
        "__interval": ctx.interval,
        "__interval_ms": str(round(interval_seconds(ctx.interval) * 1000)),
    }

    def replace(m: re.Match[str]) -> str:
        name = m[1] or m[3] or m[4]
        if name in builtins:
            return builtins[name]
        if name.startswith("__"):
            return m[0]  # a macro: the server's business
        if name not in ctx.variables:
            raise MacroError(f"unknown template variable ${name}")
        value = ctx.variables[name]
        if isinstance(value, str):
            return value.replace("'", "''")
        return ",".join(_literal(v) for v in value)

    return _VARIABLE.sub(replace, sql)


def _macros(sql: str, ctx: Context) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m[1]
        args = [a.strip() for a in m[2].split(",")]
        if name == "__timeGroup" and sql[m.end() : m.end() + 1] == ",":
            name = "__timeGroupAlias"  # Grafana's pre-5.3 compatibility rule
        return _macro(name, args, ctx)

    return _MACRO.sub(replace, sql)


def _macro(name: str, args: list[str], ctx: Context) -> str:
    start, end = _rfc3339(ctx.start), _rfc3339(ctx.end)
    if name == "__time":
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{start}' AND '{end}'"
    if name == "__timeFrom":
        return f"'{start}'"
    if name == "__timeTo":
        return f"'{end}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) < 2:
            raise MacroError(f"${name} needs a time column and an interval")
        step = _number(interval_seconds(args[1]))
        group = f"floor(extract(epoch from {args[0]})/{step})*{step}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    raise MacroError(f"unknown macro ${name}")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _number(seconds: float) -> str:
    """As Go's %v prints a float64: 300, 0.5."""
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def _rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped, `Z`."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += ("." + f"{utc.microsecond:06d}").rstrip("0")
    return text + "Z"


def default_interval(start: datetime, end: datetime, *, points: int = 1000) -> str:
    """Roughly what Grafana picks for a range drawn on a panel ~1,000 points wide."""
    raw = (end - start) / points
    for step in ("1s", "10s", "30s", "1m", "5m", "10m", "30m", "1h", "3h", "12h", "1d"):
        if timedelta(seconds=interval_seconds(step)) >= raw:
            return step
    return "1d"
