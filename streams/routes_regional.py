"""`/v1/regional`: aggregates pooled across the grants of several owners, in one read.

A regional body (an energy syndicate, a metropolitan authority) that holds district-pooled
grants from several municipalities reads, per bucket and metric, district pools, one total per
organisation and the regional total, each released under the strictest pool minimum of the
owners in it, and a total only when the districts it suppressed together meet that minimum
(docs/organisations.md). One SQL function computes it for the API and for governed SQL
(store/migrations/0061_regional_pools.sql), from the ledger of released buckets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from store import query as store_query
from store.reader import release_async
from streams import audit, grants
from streams.auth import CallerDep, forbidden
from streams.errors import ApiError
from streams.gateway import GatewayDep
from streams.routes_grants import DeviceType, interval_seconds
from streams.routes_history import MAX_RANGE
from streams.scope import Grant

router = APIRouter(prefix="/v1/regional", tags=["history"])

LEVELS: Final = ("district", "organisation", "region")
MAX_ROWS: Final = 10_000
Level = Literal["district", "organisation", "region"]

_POOLS: Final = (
    "SELECT bucket, level, organisations, district, metric, sum, avg, count, devices"
    " FROM silobreak_regional_pools(%(me)s, %(type)s, %(width)s, %(t0)s, %(t1)s, %(min)s)"
    " WHERE level = ANY(%(levels)s) AND (%(metrics)s::text[] IS NULL OR metric = ANY(%(metrics)s))"
    " ORDER BY bucket, array_position(%(order)s, level), organisations, district, metric"
    " LIMIT %(limit)s"
)


@router.get("")
async def regional_pools(
    request: Request,
    caller: CallerDep,
    gateway: GatewayDep,
    device_type: DeviceType,
    interval: Annotated[str, Query(description="the grants' interval: 15m, 1h, 1d")],
    start: Annotated[datetime, Query(description="from this bucket (inclusive)")],
    end: Annotated[datetime | None, Query(description="to this time (exclusive); now")] = None,
    metric: Annotated[list[str] | None, Query(max_length=32)] = None,
    level: Annotated[list[Level] | None, Query(max_length=3)] = None,
) -> JSONResponse:
    """District pools, organisation totals and the regional total of one device type, over
    every live district-pooled grant the caller holds for it at `interval`."""
    try:
        width = timedelta(seconds=interval_seconds(interval))
    except ValueError as exc:
        raise ApiError(422, "bad_interval", str(exc)) from None
    if start.tzinfo is None or (end is not None and end.tzinfo is None):
        raise ApiError(422, "naive_time", "start and end need a UTC offset (…Z or +01:00)")
    now = datetime.now(UTC)
    end = end or now
    if end <= start or end - start > MAX_RANGE:
        raise ApiError(422, "bad_range", f"end after start, at most {MAX_RANGE.days} days")
    first, last = store_query.whole_buckets(start, end, width)
    last = store_query.sealed_end(last, width, now, gateway.config.aggregate_grace)
    async with request.app.state.pool.connection() as conn:
        used = await grants.pooled_for(conn, caller, device_type, width)
        if not used:
            raise forbidden(
                "no_grant",
                f"{caller.principal} holds no live {device_type} grant pooled per district"
                f" at {interval}",
            )
        rows: list[dict[str, Any]] = []
        if last > first:
            pooled = store_query.Scope(device_type, pooled=True, interval=width)
            await release_async(conn, pooled, first, last)
            cur = await conn.execute(
                _POOLS,
                {
                    "me": caller.principal, "type": device_type, "width": width, "t0": first,
                    "t1": last, "min": gateway.config.min_pool, "levels": list(level or LEVELS),
                    "metrics": metric, "order": list(LEVELS), "limit": MAX_ROWS + 1,
                },
            )  # fmt: skip
            rows = [
                {"bucket": b, "level": lv, "organisations": orgs, "district": d or None,
                 "metric": m, "sum": s, "avg": a, "count": c, "devices": n}
                for b, lv, orgs, d, m, s, a, c, n in await cur.fetchall()
            ]  # fmt: skip
        if len(rows) > MAX_ROWS:
            raise ApiError(
                422, "too_many_rows", f"more than {MAX_ROWS} rows: ask for a shorter range"
            )
        await audit.record_many(conn, [_read(caller.principal, g, rows, first, last) for g in used])
    body = {
        "device_type": device_type,
        "interval_s": int(width.total_seconds()),
        "start": first,
        "end": max(first, last),
        "terms": [g.terms() for g in used],
        "rows": rows,
    }
    return JSONResponse(jsonable_encoder(body))


def _read(
    actor: str, g: Grant, rows: list[dict[str, Any]], start: datetime, end: datetime
) -> audit.Event:
    """One grant's share of the read: the rows its owner's organisation is in."""
    mine = sum(1 for r in rows if g.owner_org in r["organisations"])
    return audit.Event(
        actor, "history.read", g.owner, g.consumer, g.id, None, mine,
        {"regional": True, "start": start, "end": end},
    )  # fmt: skip
