"""`/v1/history`: readings of a time range under a grant, paged by key, as JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from streams import audit, csvsafe, grants, history
from streams.aggregate import AggregateKey, aggregates, key_of
from streams.auth import Caller, CallerDep, forbidden
from streams.cursor import from_micros, micros
from streams.errors import ApiError
from streams.gateway import GatewayDep
from streams.routes_grants import DeviceType
from streams.scope import (
    AGGREGATE,
    POOL_DISTRICT,
    RAW,
    Grant,
    Scope,
    narrow,
    pick_device_type,
)

router = APIRouter(prefix="/v1/history", tags=["history"])

# Rows per page: ~1 MB of JSON; a bigger range is read page by page with `after`.
MAX_PAGE: Final = 10_000
DEFAULT_PAGE: Final = 1000
# The longest range one request may span: bounds the scan (and a rollup's rows) per page.
MAX_RANGE: Final = timedelta(days=400)
RAW_COLUMNS: Final = ("time", "device_id", "device_type", "service", "district", "metric", "value")
AGG_COLUMNS: Final = (
    "bucket", "device_id", "device_type", "service", "district", "metric",
    "avg", "min", "max", "count",
)  # fmt: skip
# Pooled rows carry no min, max or last: each would be one device's own reading.
POOLED_COLUMNS: Final = (
    "bucket", "device_type", "service", "district", "metric", "sum", "avg", "count", "devices",
)  # fmt: skip
NEXT_HEADER: Final = "X-Next-After"
TERMS_HEADER: Final = "X-Silobreak-Terms"


class RawReading(BaseModel):
    time: datetime
    device_id: str
    device_type: str
    service: str
    district: str | None
    metric: str
    value: float


class DeviceAggregate(BaseModel):
    """One device's bucket of one metric (per-device aggregate grants)."""

    bucket: datetime
    device_id: str
    device_type: str
    service: str
    district: str | None
    metric: str
    avg: float | None
    min: float | None
    max: float | None
    count: int


class PooledAggregate(BaseModel):
    """One district's released bucket of one metric: no min, max or last, ever."""

    bucket: datetime
    device_id: None
    device_type: str
    service: str
    district: str | None
    metric: str
    sum: float
    avg: float
    count: int
    devices: int


class Terms(BaseModel):
    """The terms the data comes under: carried with every history page and delivery."""

    grant_id: int
    owner: str
    owner_org: str
    consumer: str
    consumer_org: str
    purpose: str
    expires_at: datetime
    granularity: Literal["raw", "aggregate"]
    redistribution: Literal["prohibited"]
    obligations: dict[str, Any]


class HistoryPage(BaseModel):
    grant_id: int
    granularity: Literal["raw", "aggregate"]
    terms: Terms
    readings: list[RawReading] | list[DeviceAggregate] | list[PooledAggregate]
    next_after: str | None


@router.get("", responses={200: {"model": HistoryPage, "content": {"text/csv": {}}}})
async def read_history(
    request: Request,
    caller: CallerDep,
    gateway: GatewayDep,
    start: Annotated[datetime, Query(description="from this reading time (inclusive)")],
    end: Annotated[datetime | None, Query(description="to this time (exclusive); now")] = None,
    grant_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    device_type: DeviceType | None = None,
    metric: Annotated[list[str] | None, Query(max_length=32)] = None,
    district: Annotated[list[str] | None, Query(max_length=500)] = None,
    granularity: Literal["raw", "aggregate"] | None = None,
    after: Annotated[str | None, Query(max_length=200, description="previous next_after")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    fmt: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> Response:
    """Readings (or the grant's aggregates) in [start, end), under exactly the live rules."""
    start, end = _range(start, end)
    async with request.app.state.pool.connection() as conn:
        grant, scope = await _authorise(
            conn, caller, grant_id, device_type, metric or [], district or [], granularity
        )
        if grant.granularity == RAW:
            rows = await history.raw_page(
                conn, scope, start=start, end=end, after=_row_key(after), limit=limit
            )
            readings = history.explode(scope, rows)
            next_after = _encode_row_key(rows[-1]) if len(rows) == limit else None
        else:
            readings = await aggregates(
                conn, scope, start=start, end=end, after=_agg_key(after), limit=limit,
                min_pool=gateway.config.min_pool, grace=gateway.config.aggregate_grace,
            )  # fmt: skip
            full = len(readings) == limit
            next_after = _encode_agg_key(key_of(readings[-1])) if full else None
        await audit.record(
            conn,
            audit.Event(
                caller.principal, "history.read", grant.owner, grant.consumer, grant.id, None,
                len(readings),
                {"device_type": scope.device_type, "start": start, "end": end, "format": fmt},
            ),
        )  # fmt: skip
    if fmt == "csv":
        return _csv(grant, readings, next_after)
    body = {"grant_id": grant.id, "granularity": grant.granularity, "terms": grant.terms(),
            "readings": readings, "next_after": next_after}  # fmt: skip
    return JSONResponse(jsonable_encoder(body))


async def _authorise(
    conn: psycopg.AsyncConnection[Any],
    caller: Caller,
    grant_id: int | None,
    device_type: str | None,
    metrics: list[str],
    districts: list[str],
    granularity: str | None,
) -> tuple[Grant, Scope]:
    """The grant and scope of a read, or a 403 that is also on record."""
    grant: Grant | None = None
    try:
        if grant_id is None:
            grant = await grants.covering(conn, caller, device_type)
        else:
            grant = await grants.get(conn, grant_id)
            grant = await grants.usable(conn, caller, grant_id)
        if granularity == RAW and grant.granularity == AGGREGATE:
            raise forbidden(
                "aggregate_only", f"grant {grant.id} allows aggregates only, not raw readings"
            )
        scope = narrow(grant, pick_device_type(grant, device_type), metrics, districts)
    except ApiError as exc:
        if exc.status == 403:
            await audit.record(
                conn,
                audit.Event(
                    caller.principal, "history.refused",
                    grant.owner if grant else None, caller.principal,
                    grant.id if grant else grant_id, None, 0, {"reason": exc.reason},
                ),
            )  # fmt: skip
        raise
    return grant, scope


def _range(start: datetime, end: datetime | None) -> tuple[datetime, datetime]:
    if start.tzinfo is None or (end is not None and end.tzinfo is None):
        raise ApiError(422, "naive_time", "start and end need a UTC offset (…Z or +01:00)")
    end = end or datetime.now(UTC)
    if end <= start:
        raise ApiError(422, "empty_range", f"end {end} is not after start {start}")
    if end - start > MAX_RANGE:
        raise ApiError(422, "range_too_long", f"at most {MAX_RANGE.days} days per request")
    return start, end


def _encode_row_key(row: tuple[Any, ...]) -> str:
    return f"{micros(row[0])}/{row[1]}"


def _row_key(text: str | None) -> history.RowKey | None:
    if text is None:
        return None
    try:
        at, device = text.split("/", 1)
        return history.RowKey(from_micros(int(at)), device)
    except (ValueError, OverflowError):
        raise ApiError(
            422, "malformed_after", f"{text!r} is not a next_after of this API"
        ) from None


def _encode_agg_key(key: AggregateKey) -> str:
    return f"{micros(key.bucket)}/{key.metric}/{key.group}"


def _agg_key(text: str | None) -> AggregateKey | None:
    if text is None:
        return None
    try:
        at, metric, group = text.split("/", 2)
        return AggregateKey(from_micros(int(at)), group, metric)
    except (ValueError, OverflowError):
        raise ApiError(
            422, "malformed_after", f"{text!r} is not a next_after of this API"
        ) from None


def _csv(grant: Grant, readings: list[dict[str, Any]], next_after: str | None) -> Response:
    columns: tuple[str, ...]
    if grant.granularity == RAW:
        columns = RAW_COLUMNS
    else:
        columns = POOLED_COLUMNS if grant.pool == POOL_DISTRICT else AGG_COLUMNS
    text = io.StringIO()
    # RFC 4180 line ends: a text cell holding a CR is then quoted, as one holding a LF is.
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(columns)
    for r in readings:
        writer.writerow([csvsafe.cell(r.get(c)) for c in columns])
    headers = {NEXT_HEADER: next_after} if next_after else {}
    # A CSV has no room for metadata: the terms travel in a header, as JSON (ASCII-escaped).
    headers[TERMS_HEADER] = json.dumps(grant.terms(), separators=(",", ":"))
    return Response(text.getvalue(), media_type="text/csv", headers=headers)
