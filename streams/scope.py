"""What one read may see under one grant: the rule live delivery, replay and history all apply."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from psycopg import sql

from devices.catalog import DEVICE_TYPES
from streams.auth import forbidden
from streams.errors import ApiError

logger = logging.getLogger(__name__)

RAW: Final = "raw"
AGGREGATE: Final = "aggregate"
POOL_DEVICE: Final = "device"
POOL_DISTRICT: Final = "district"


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant as stored: who may read what of whose data, how, why and until when."""

    id: int
    owner: str
    consumer: str
    device_types: tuple[str, ...]
    metrics: tuple[str, ...]  # empty: every metric of the device types
    districts: tuple[str, ...] | None
    bbox: tuple[float, float, float, float] | None  # min_lon, min_lat, max_lon, max_lat
    granularity: str
    interval_s: int | None
    pool: str | None
    min_devices: int | None
    purpose: str
    expires_at: datetime
    status: str
    created_by: str
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    note: str

    def metrics_of(self, device_type: str) -> tuple[str, ...]:
        """The granted metrics of one device type (in catalog order)."""
        names = DEVICE_TYPES[device_type].metric_names
        return names if not self.metrics else tuple(m for m in names if m in self.metrics)

    def is_live(self, now: datetime) -> bool:
        return self.status == "active" and self.expires_at > now

    @property
    def personal_allowed(self) -> bool:
        """Personal-data devices are read only pooled per district, never one by one."""
        return self.granularity == AGGREGATE and self.pool == POOL_DISTRICT


@dataclass(frozen=True, slots=True)
class Scope:
    """One device type's readings a request may see: owner, metrics, place, personal data."""

    grant: Grant
    device_type: str
    metrics: tuple[str, ...]
    districts: frozenset[str] | None

    @property
    def table(self) -> str:
        return f"readings_{self.device_type}"

    def matches(
        self,
        service: str,
        district: str | None,
        lat: float | None,
        lon: float | None,
        personal: bool,
    ) -> bool:
        """The in-memory twin of `where()`, for rows the live hub fetched for everyone."""
        g = self.grant
        if service != g.owner or (personal and not g.personal_allowed):
            return False
        if self.districts is not None and district not in self.districts:
            return False
        if g.bbox is not None:
            if lat is None or lon is None:
                return False
            min_lon, min_lat, max_lon, max_lat = g.bbox
            return min_lon <= lon <= max_lon and min_lat <= lat <= max_lat
        return True

    def where(
        self, present: Callable[[str], sql.Composable] | None = None
    ) -> tuple[sql.Composable, dict[str, Any]]:
        """A condition over `r` (the readings table) and `d` (devices), with its parameters.

        `present(metric)` says a row has the metric (default `r.<metric> IS NOT NULL`; an
        aggregate view's `r.<metric>_count > 0`); `r` needs only `service` besides.
        """
        g = self.grant
        parts: list[sql.Composable] = [sql.SQL("r.service = %(owner)s")]
        params: dict[str, Any] = {"owner": g.owner}
        if not g.personal_allowed:
            parts.append(sql.SQL("NOT d.personal_data"))
        if self.districts is not None:
            parts.append(sql.SQL("d.district = ANY(%(districts)s)"))
            params["districts"] = sorted(self.districts)
        if g.bbox is not None:
            parts.append(
                sql.SQL("d.lon BETWEEN %(x0)s AND %(x1)s AND d.lat BETWEEN %(y0)s AND %(y1)s")
            )
            params.update(x0=g.bbox[0], y0=g.bbox[1], x1=g.bbox[2], y1=g.bbox[3])
        has = present or _not_null
        metric_any = sql.SQL(" OR ").join(has(m) for m in self.metrics)
        parts.append(sql.SQL("({})").format(metric_any))
        return sql.SQL(" AND ").join(parts), params


def _not_null(metric: str) -> sql.Composable:
    return sql.SQL("r.{} IS NOT NULL").format(sql.Identifier(metric))


def narrow(
    grant: Grant,
    device_type: str,
    metrics: Sequence[str] = (),
    districts: Sequence[str] = (),
) -> Scope:
    """The scope a request asks for within `grant`, or a 403 saying what lies outside it."""
    if device_type not in grant.device_types:
        raise forbidden(
            "device_type_not_granted",
            f"grant {grant.id} covers {', '.join(grant.device_types)}, not {device_type!r}",
        )
    granted = grant.metrics_of(device_type)
    outside = [m for m in metrics if m not in granted]
    if outside:
        raise forbidden(
            "metric_not_granted",
            f"grant {grant.id} covers {', '.join(granted)} of {device_type}, "
            f"not {', '.join(outside)}",
        )
    allowed = None if grant.districts is None else frozenset(grant.districts)
    if districts:
        wanted = frozenset(districts)
        if allowed is not None and not wanted <= allowed:
            raise forbidden(
                "district_not_granted",
                f"grant {grant.id} covers districts {', '.join(sorted(allowed))}, "
                f"not {', '.join(sorted(wanted - allowed))}",
            )
        allowed = wanted
    chosen = tuple(m for m in granted if not metrics or m in metrics)
    return Scope(grant, device_type, chosen, allowed)


def pick_device_type(grant: Grant, device_type: str | None) -> str:
    """The device type a request names, or the grant's only one."""
    if device_type is not None:
        return device_type
    if len(grant.device_types) == 1:
        return grant.device_types[0]
    raise ApiError(
        422,
        "device_type_required",
        f"grant {grant.id} covers {', '.join(grant.device_types)}: name one with device_type",
    )
