"""Names and shapes of the per-device aggregates (1 minute, 1 hour) both backends provide.

TimescaleDB keeps them as continuous aggregates, plain PostgreSQL as rollup tables behind
views of the same name and columns (migrations 0010), so reads are the same SQL on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

from store.schema import READINGS_TABLES

# TimescaleDB's time_bucket() aligns every bucket to this origin (a Monday); date_bin() with
# it gives the same buckets, so the plain backend and read queries agree with the caggs.
ORIGIN: Final = datetime(2000, 1, 3, tzinfo=UTC)
# What each aggregate row keeps per metric: `sum` lets coarser buckets and pools be exact
# (avg = sum / count), `last` is the value at the latest reading time that had the metric.
STATS: Final = ("avg", "min", "max", "count", "sum", "last")


@dataclass(frozen=True, slots=True)
class Level:
    """One stored aggregate: its bucket width and the view holding it per device type."""

    name: str
    width: timedelta

    def view(self, device_type: str) -> str:
        return f"agg_{self.name}_{READINGS_TABLES[device_type].device_type}"

    def rollup(self, device_type: str) -> str:
        """The plain backend's materialized table behind the view."""
        return f"rollup_{self.name}_{READINGS_TABLES[device_type].device_type}"


MINUTE: Final = Level("1m", timedelta(minutes=1))
HOUR: Final = Level("1h", timedelta(hours=1))
# Finest first: a read uses the coarsest level whose width divides the requested step.
LEVELS: Final = (MINUTE, HOUR)
LEVELS_BY_NAME: Final = MappingProxyType({lv.name: lv for lv in LEVELS})


def column(metric: str, stat: str) -> str:
    """The column of one metric's statistic in an aggregate view: `pm25_avg`."""
    return f"{metric}_{stat}"


def aggregate_columns(device_type: str) -> tuple[str, ...]:
    """Every column of a device type's aggregate views, in order."""
    metrics = READINGS_TABLES[device_type].metric_columns
    return ("bucket", "device_id", "service", *(column(m, s) for m in metrics for s in STATS))
