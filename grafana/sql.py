"""SQL the panels share: readings from the coarsest stored level that fits the panel's interval.

The store keeps per-device aggregates of 1 minute and 1 hour (`agg_1m_<type>`,
`agg_1h_<type>`, on TimescaleDB and plain PostgreSQL alike) beside the raw `readings_<type>`
tables. `source()` reads all three shapes as one: a row per (time, device) with each metric's
sum, count, min and max, so one outer query serves every range. Grafana sets `$__interval`
from the range and the panel width; `silobreak_agg_level()` (the store's one level rule,
which every reader calls) names the branch that runs, the others are constant-false and
pruned by the planner before they read anything.

Queries name tables unqualified: the platform's own login finds them in `public`, a governed
role (`grafana_<service>`) finds its views of the same names in `governed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# The stored levels, by the name silobreak_agg_level() gives them.
_LEVELS: Final = (("1h", "agg_1h"), ("1m", "agg_1m"))
STATS: Final = ("sum", "count", "min", "max")
# The store's one level rule (migration 0050), on the panel's interval: the panel groups
# whole intervals, so the range needs no check of its own.
LEVEL: Final = "silobreak_agg_level($__interval_ms * INTERVAL '1 millisecond')"


def ident(name: str) -> str:
    """A column name as SQL: `index` is a reserved word."""
    return f'"{name}"' if name == "index" else name


def source(
    device_type: str,
    metrics: Sequence[str],
    *,
    level: str | None = None,
    energy: Sequence[str] = (),
) -> str:
    """SELECT of (t, device_id, service, <m>_sum, <m>_count, <m>_min, <m>_max) in the range.

    `level` forces one stored level ("agg_1h": for daily and hour-of-day figures); by default
    the one silobreak_agg_level() picks for $__interval, as every reader of the store does.
    Metrics named in `energy` are sound levels whose stored sum is of 10^(L/10)
    (docs/store.md): raw rows give the same, so `energy_avg()` reads every level alike.
    """
    stats = [f"{m}_{s}" for m in metrics for s in STATS]
    branches = []
    for name, view in _LEVELS:
        if level is not None and view != level:
            continue
        conds = [] if level is not None else [f"{LEVEL} = '{name}'"]
        conds.append("$__timeFilter(bucket)")
        branches.append(
            f"SELECT bucket AS t, device_id, service, {', '.join(stats)}"
            f" FROM {view}_{device_type} WHERE {' AND '.join(conds)}"
        )
    if level is None:
        raw = ", ".join(
            f"{_raw_sum(m, m in energy)}, ({ident(m)} IS NOT NULL)::int, {ident(m)}::float8,"
            f" {ident(m)}::float8"
            for m in metrics
        )
        branches.append(
            f"SELECT time, device_id, service, {raw} FROM readings_{device_type}"
            f" WHERE {LEVEL} = 'raw' AND $__timeFilter(time)"
        )
    return "\n  UNION ALL\n  ".join(branches)


def avg(metric: str, alias: str = "s") -> str:
    """The mean of a metric over the grouped rows of a source()."""
    return f"sum({alias}.{metric}_sum) / nullif(sum({alias}.{metric}_count), 0)"


def energy_avg(metric: str, alias: str = "s") -> str:
    """The energy mean of a sound level over the grouped rows of a source(energy=...)."""
    return f"10 * log10({avg(metric, alias)})"


def _raw_sum(metric: str, energy: bool) -> str:
    return f"power(10, {ident(metric)}::float8 / 10)" if energy else f"{ident(metric)}::float8"


def device_mean(metric: str, alias: str = "s") -> str:
    """One source() row's mean of a metric (a device over one bucket)."""
    return f"{alias}.{metric}_sum / nullif({alias}.{metric}_count, 0)"


def local(column: str, timezone: str) -> str:
    """A timestamptz as the city's wall-clock time."""
    return f"({column} AT TIME ZONE '{timezone}')"


def local_day(column: str, timezone: str, *, shift_hours: int = 0) -> str:
    """The start of the city's local day holding `column` (shifted back by `shift_hours`: with
    12, an evening and the following morning fall in one "night" that starts at noon)."""
    shift = f" - INTERVAL '{shift_hours} hours'" if shift_hours else ""
    back = f" + INTERVAL '{shift_hours} hours'" if shift_hours else ""
    return (
        f"((date_trunc('day', {local(column, timezone)}{shift}){back}) AT TIME ZONE '{timezone}')"
    )


def latest(device_type: str, columns: Sequence[str], *, window: str) -> str:
    """Each device's newest reading in the `window` before the range's end (DISTINCT ON)."""
    cols = ", ".join(f"r.{ident(c)}" for c in columns)
    return (
        f"SELECT DISTINCT ON (r.device_id) r.device_id, r.time, {cols}"
        f" FROM readings_{device_type} r"
        f" WHERE r.time > $__timeTo()::timestamptz - INTERVAL '{window}'"
        f" AND r.time <= $__timeTo()::timestamptz"
        f" ORDER BY r.device_id, r.time DESC"
    )
