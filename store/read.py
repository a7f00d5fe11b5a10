"""The operator's read interface: a selection, and the shapes readings and buckets come in.

A `Selection` (what `silobreak query` and the benchmarks ask for) becomes a `store.query.Scope`;
the queries are store/query.py's, the one read path every reader uses. store/reader.py runs
them on a sync or async connection, on either backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from store.aggregates import LEVELS_BY_NAME
from store.errors import StoreError
from store.query import LevelName, RawKey, Scope
from store.schema import READINGS_TABLES

Pool = Literal["device", "district"]
LevelChoice = LevelName  # the store's level names, "auto" to let it choose
POOLS: Final = ("device", "district")

# Row layouts the shapers below read.
_RAW_FIXED: Final = 4  # time, device_id, service, district, then the metrics


@dataclass(frozen=True, slots=True)
class Selection:
    """Which readings of one device type: metrics (empty: all), devices, owner, district."""

    device_type: str
    metrics: tuple[str, ...] = ()
    device_ids: tuple[str, ...] | None = None
    service: str | None = None
    district: str | None = None

    def __post_init__(self) -> None:
        self.scope()  # the scope checks the type and metrics

    @property
    def chosen_metrics(self) -> tuple[str, ...]:
        """The selected metrics in catalog order."""
        names = READINGS_TABLES[self.device_type].metric_columns
        return names if not self.metrics else tuple(m for m in names if m in self.metrics)

    def scope(self, *, pool: Pool = "device", step: timedelta | None = None) -> Scope:
        """The scope of this selection: every owner unless one is named, personal data too
        (the platform's own reads), pooled per district with `pool="district"`."""
        return Scope(
            self.device_type,
            self.metrics,
            owners=None if self.service is None else (self.service,),
            device_ids=self.device_ids,
            districts=None if self.district is None else (self.district,),
            pooled=pool == "district",
            interval=step if pool == "district" else None,
        )


@dataclass(frozen=True, slots=True)
class Reading:
    """One stored value, as the contract delivers readings."""

    time: datetime
    device_id: str
    device_type: str
    service: str
    district: str | None
    metric: str
    value: float


@dataclass(frozen=True, slots=True)
class RawPage:
    readings: list[Reading]
    next: RawKey | None  # None: the range is exhausted


@dataclass(frozen=True, slots=True)
class Bucket:
    """An aggregate over [bucket, bucket + step): per device, or pooled over a district.

    Pooled buckets carry no min, max or last (each is one device's own reading), and a sum."""

    bucket: datetime
    device_id: str | None  # None when pooled
    device_type: str
    service: str
    district: str | None
    metric: str
    avg: float | None
    min: float | None  # None when pooled
    max: float | None  # None when pooled
    count: int
    last: float | None  # None when pooled
    devices: int  # devices with a value in the bucket (1 per device)
    sum: float | None = None  # pooled only


def choose_level(step: timedelta, level: LevelChoice) -> LevelChoice:
    """Check that a forced level can build buckets of `step`."""
    if level in ("auto", "raw"):
        return level
    width = LEVELS_BY_NAME[level].width
    if step < width or step % width:
        raise StoreError(f"a step of {step} cannot be built from {level} buckets")
    return level


def raw_page(sel: Selection, rows: Sequence[tuple[Any, ...]], limit: int) -> RawPage:
    metrics = sel.chosen_metrics
    out: list[Reading] = []
    for row in rows:
        at, device_id, service, district = row[:_RAW_FIXED]
        for metric, value in zip(metrics, row[_RAW_FIXED:], strict=True):
            if value is not None:
                out.append(
                    Reading(at, device_id, sel.device_type, service, district, metric, value)
                )
    last = RawKey(rows[-1][0], rows[-1][1]) if len(rows) == limit and rows else None
    return RawPage(out, last)


def bucket_rows(sel: Selection, rows: Sequence[tuple[Any, ...]]) -> list[Bucket]:
    """Per-device buckets as store.query.buckets() returns them."""
    return [
        Bucket(b, dev, sel.device_type, svc, district, metric, avg, lo, hi, int(count), last, 1)
        for b, dev, svc, district, metric, avg, lo, hi, count, last in rows
    ]


def pooled_rows(sel: Selection, rows: Sequence[tuple[Any, ...]]) -> list[Bucket]:
    """Pooled buckets as store.query.pooled() returns them."""
    return [
        Bucket(
            b,
            None,
            sel.device_type,
            svc,
            district or None,
            metric,
            avg,
            None,
            None,
            int(count),
            None,
            int(devices),
            total,
        )
        for b, svc, district, metric, total, avg, count, devices in rows
    ]


def latest_rows(sel: Selection, rows: Sequence[tuple[Any, ...]]) -> list[Reading]:
    return [
        Reading(at, dev, sel.device_type, svc, district, metric, value)
        for at, dev, svc, district, metric, value in rows
    ]
