"""`/v1/streams`: the catalog of what exists, so a consumer knows what it may ask for."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request
from psycopg import sql
from pydantic import BaseModel

from devices.catalog import DEVICE_TYPES
from store.schema import READINGS_TABLES
from streams.auth import CallerDep

router = APIRouter(prefix="/v1/streams", tags=["catalog"])

# The rate is measured over this much recent reading time: long enough to span a few
# reporting periods of slow devices (meters every minute), short enough to be current.
RATE_WINDOW_S: Final = 300


class Stream(BaseModel):
    """One owner service's metric of one device type."""

    service: str
    # The organisation the service belongs to.
    organisation: str
    device_type: str
    metric: str
    unit: str
    description: str
    # How `avg` is taken: `mean`, or `energy_mean` for sound levels (10·log10 of the mean
    # of 10^(L/10)); for those, an aggregate's `sum` is of 10^(L/10) (docs/store.md).
    aggregation: str
    districts: list[str]
    devices: int
    # Readings a second over the last RATE_WINDOW_S seconds (by reading time).
    rate: float
    # Personal data is granted only as aggregates pooled per district.
    personal_data: bool
    # Another organisation's stream is listed only when it is offered, with the terms offered
    # (granularity, interval, pool, obligations); null for the caller's own organisation's.
    offered: dict[str, Any] | None = None


# The caller's organisation's streams, and the streams other organisations offer (only the
# offered districts' devices count). Nothing else of another organisation is listed.
_FLEETS: Final = """
SELECT d.service, s.organisation, d.device_type,
       array_agg(DISTINCT d.district) FILTER (WHERE d.district IS NOT NULL), count(*),
       array_agg(DISTINCT coalesce(d.medium, '')), bool_or(d.personal_data),
       o.metrics, o.terms
FROM devices d
JOIN services s ON s.name = d.service
LEFT JOIN stream_offers o ON o.service = d.service AND o.device_type = d.device_type
                          AND o.withdrawn_at IS NULL AND s.organisation <> %(org)s
WHERE d.lifecycle = 'active'
  AND (s.organisation = %(org)s
       OR (o.id IS NOT NULL AND (o.districts IS NULL OR d.district = ANY(o.districts))))
GROUP BY d.service, s.organisation, d.device_type, o.id
ORDER BY d.service, d.device_type
"""


@router.get("", response_model=list[Stream])
async def list_streams(request: Request, caller: CallerDep) -> list[Stream]:
    """The streams of the caller's organisation, and those other organisations offer: one per
    owner service, device type and metric."""
    async with request.app.state.pool.connection() as conn:
        cur = await conn.execute(_FLEETS, {"org": caller.organisation})
        fleets = await cur.fetchall()
        rates: dict[tuple[str, str, str], float] = {}
        for device_type in {f[2] for f in fleets}:
            rates.update(await _rates(conn, device_type))
    out = []
    for service, org, device_type, districts, count, media, personal, offered, terms in fleets:
        kind = DEVICE_TYPES[device_type]
        for m in kind.metrics:
            if offered and m.name not in offered:
                continue
            units = sorted({m.unit_for(x or None) for x in media})
            out.append(
                Stream(
                    service=service, organisation=org, device_type=device_type, metric=m.name,
                    unit=" or ".join(u for u in units if u) or "", description=m.description,
                    aggregation=m.aggregation.value,
                    districts=sorted(districts or []), devices=count,
                    rate=round(rates.get((service, device_type, m.name), 0.0), 3),
                    personal_data=bool(personal),
                    offered=None if offered is None else dict(terms),
                )
            )  # fmt: skip
    return out


async def _rates(conn: object, device_type: str) -> dict[tuple[str, str, str], float]:
    table = READINGS_TABLES[device_type]
    counts = sql.SQL(", ").join(
        sql.SQL("count({})").format(sql.Identifier(c)) for c in table.metric_columns
    )
    query = sql.SQL(
        "SELECT service, {counts} FROM {table}"
        " WHERE time > now() - make_interval(secs => %s) GROUP BY service"
    ).format(counts=counts, table=sql.Identifier(table.name))
    cur = await conn.execute(query, (RATE_WINDOW_S,))  # type: ignore[attr-defined]
    out = {}
    for service, *values in await cur.fetchall():
        for metric, n in zip(table.metric_columns, values, strict=True):
            out[(service, device_type, metric)] = n / RATE_WINDOW_S
    return out
