"""What one read may see under one grant: the rule live delivery, replay and history all apply.

A grant becomes a `store.query.Scope` (plain data) and every read goes through the store's
one query builder; `Scope.matches()` is the same rule for the rows the live hub fetched once
for every feed (tests/streams/test_one_read_path.py holds the two together)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from devices.catalog import DEVICE_TYPES
from store import query as store_query
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
    # The owner's and the consumer's organisations; a grant between two is a contract.
    owner_org: str = ""
    consumer_org: str = ""
    # What the consumer accepts to do: {"delete_after_days": n, "attribution": "..."}.
    obligations: Mapping[str, Any] = field(default_factory=dict)
    owner_approved_by: str | None = None
    owner_approved_at: datetime | None = None
    consumer_accepted_by: str | None = None
    consumer_accepted_at: datetime | None = None

    @property
    def cross_org(self) -> bool:
        return self.owner_org != self.consumer_org

    def terms(self) -> dict[str, Any]:
        """What every delivery and history response carries: the terms the data comes under.

        Data read under any grant may not be granted, pooled or published onward."""
        return {
            "grant_id": self.id,
            "owner": self.owner,
            "owner_org": self.owner_org,
            "consumer": self.consumer,
            "consumer_org": self.consumer_org,
            "purpose": self.purpose,
            "expires_at": self.expires_at.isoformat(),
            "granularity": self.granularity,
            "redistribution": "prohibited",
            "obligations": dict(self.obligations),
        }

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
        """The in-memory twin of `store_scope()`, for rows the live hub fetched for everyone."""
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

    def store_scope(self, *, min_pool: int = 1) -> store_query.Scope:
        """This scope as the store's read path takes it: the grant's rule as data.

        Raw and per-device grants never see personal-data devices; a district-pooled grant
        sees whole pools of its interval, over at least `min_pool` devices and readings."""
        g = self.grant
        pooled = g.granularity == AGGREGATE and g.pool == POOL_DISTRICT
        return store_query.Scope(
            self.device_type,
            self.metrics,
            owners=(g.owner,),
            districts=None if self.districts is None else tuple(sorted(self.districts)),
            bbox=g.bbox,
            personal=g.personal_allowed,
            pooled=pooled,
            interval=None if g.interval_s is None else timedelta(seconds=g.interval_s),
            min_pool=max(g.min_devices or 0, min_pool) if pooled else 1,
        )


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
