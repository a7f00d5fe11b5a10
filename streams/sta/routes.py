"""`/sta/v1.1`: the OGC SensorThings API 1.1 read side, under the caller's grants.

One route takes every resource path and one parser reads it, so the route table has one
path parameter. An id the caller may not see answers 404 exactly as an id that does not
exist, and the attempt is on record. Observations are read through the store's one query
builder, one statement per page.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from psycopg import sql

from store import query as store_query
from store.schema import READINGS_TABLES
from streams import audit
from streams.auth import Caller
from streams.errors import ApiError
from streams.sta import entities as e
from streams.sta.auth import StaCallerDep
from streams.sta.expand import expanded
from streams.sta.options import (
    NOT_FOUND,
    NOT_IMPLEMENTED,
    Options,
    Segment,
    parse_options,
    parse_path,
)
from streams.sta.views import View, names_result, narrowed, views

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/sta/v1.1", tags=["sensorthings"])

ROOT: Final = "/sta/v1.1"
ENTITY_SETS: Final = ("Things", "Locations", "Datastreams", "Sensors", "ObservedProperties",
                      "Observations")  # fmt: skip
NOT_SERVED: Final = ("HistoricalLocations", "FeaturesOfInterest")
CONFORMANCE: Final = (
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
)
_FIELDS: Final = {
    "Things": e.THING_FIELDS, "Locations": e.LOCATION_FIELDS,
    "Datastreams": e.DATASTREAM_FIELDS, "Sensors": e.SENSOR_FIELDS,
    "ObservedProperties": e.PROPERTY_FIELDS, "Observations": e.OBSERVATION_FIELDS,
}  # fmt: skip
# Each entity set's navigation properties, and those `$expand` serves (one level, no options).
_NAVIGATION: Final = {
    "Things": {"Datastreams", "Locations", "HistoricalLocations"},
    "Locations": {"Things", "HistoricalLocations"},
    "Datastreams": {"Thing", "Sensor", "ObservedProperty", "Observations"},
    "Sensors": {"Datastreams"}, "ObservedProperties": {"Datastreams"},
    "Observations": {"Datastream", "FeatureOfInterest"},
}  # fmt: skip
_EXPANDABLE: Final = {"Things": {"Datastreams", "Locations"}, "Locations": {"Things"},
                      "Datastreams": {"Thing", "Sensor", "ObservedProperty"}}  # fmt: skip
# Kept as they are in a nextLink's query (OData's own characters), so the link reads as sent.
_SAFE: Final = "$'(),:"
# Navigation property → the entity set it leads to.
_NAV: Final = {
    "Thing": "Things", "Sensor": "Sensors", "ObservedProperty": "ObservedProperties",
    "Datastream": "Datastreams",
}  # fmt: skip


@router.get("")
async def service_root(request: Request, caller: StaCallerDep) -> JSONResponse:
    """The service root: the entity sets served and the conformance classes met."""
    del caller  # authenticated like every other path
    base = _base(request)
    return JSONResponse(
        {
            "value": [{"name": name, "url": f"{base}/{name}"} for name in ENTITY_SETS],
            "serverSettings": {"conformance": list(CONFORMANCE)},
        }
    )


@router.get("/{path:path}")
async def resource(request: Request, caller: StaCallerDep, path: str) -> JSONResponse:
    """An entity set, an entity by id, or a navigation from one (`/Things('a')/Datastreams`)."""
    segments = parse_path(path)
    async with request.app.state.pool.connection() as conn:
        ctx = _Ctx(conn, caller, await views(conn, caller), _base(request), request)
        try:
            body = await _resolve(ctx, segments)
        except ApiError as exc:
            if exc.status == NOT_FOUND:
                await audit.record(
                    conn,
                    audit.Event(
                        caller.principal, "sta.refused", None, caller.principal, None, None, 0,
                        {"path": f"{ROOT}/{path}", "reason": exc.reason},
                    ),
                )  # fmt: skip
            raise
    return JSONResponse(body)


@dataclass(frozen=True, slots=True)
class _Ctx:
    conn: psycopg.AsyncConnection[Any]
    caller: Caller
    views: list[View]
    base: str
    request: Request

    def options(self, entity_set: str, *, observations: bool = False) -> Options:
        opts = parse_options(
            self.request.query_params, orderable=observations, filterable=observations,
            fields=_FIELDS[entity_set],
        )  # fmt: skip
        for name in opts.expand:
            if name not in _NAVIGATION[entity_set]:
                raise ApiError(400, "bad_expand", f"$expand: {entity_set} have no {name!r}")
            if name not in _EXPANDABLE.get(entity_set, ()):
                raise ApiError(
                    NOT_IMPLEMENTED, "not_implemented", f"$expand={name} of {entity_set}"
                )
        return opts

    def next_link(self, opts: Options) -> str:
        query = dict(self.request.query_params)
        query["$skip"] = str(opts.skip + opts.top)
        query["$top"] = str(opts.top)
        path = quote(self.request.path_params["path"], safe="/'():,")
        return f"{self.base}/{path}?{urlencode(query, safe=_SAFE)}"


async def _resolve(ctx: _Ctx, segments: Sequence[Segment]) -> dict[str, Any]:
    head = segments[0]
    if head.name in NOT_SERVED:
        raise ApiError(NOT_IMPLEMENTED, "not_implemented", f"{head.name} are not served yet")
    if head.name not in ENTITY_SETS:
        raise ApiError(NOT_FOUND, "unknown_resource", f"no entity set {head.name!r}")
    if len(segments) > 2 or any(s.id is not None for s in segments[1:]):
        raise ApiError(
            NOT_IMPLEMENTED, "not_implemented", "paths deeper than Entity(id)/Navigation"
        )
    if head.id is None:
        if len(segments) > 1:
            raise ApiError(NOT_FOUND, "unknown_resource", f"{head.name} needs an id")
        return await _collection(ctx, head.name)
    if len(segments) == 1:
        opts = ctx.options(head.name)
        found = await _entity(ctx, head.name, head.id, expand=opts)
        return found if opts.expand else e.selected(found, opts.select)
    return await _navigate(ctx, head, segments[1].name)


async def _collection(ctx: _Ctx, entity_set: str) -> dict[str, Any]:
    if entity_set == "Observations":
        return await _all_observations(ctx)
    if entity_set == "Sensors":
        return _listed(ctx, "Sensors", [e.sensor(ctx.base, t) for t in await _types(ctx)])
    if entity_set == "ObservedProperties":
        found = [e.observed_property(ctx.base, t, m) for t, m in await _properties(ctx)]
        return _listed(ctx, "ObservedProperties", found)
    return await _devices(ctx, entity_set)


async def _entity(
    ctx: _Ctx, entity_set: str, key: str, *, expand: Options | None = None
) -> dict[str, Any]:
    missing = e.missing(entity_set, key)
    if entity_set == "Sensors":
        if key not in await _types(ctx):
            raise missing
        return e.sensor(ctx.base, key)
    if entity_set == "ObservedProperties":
        pair = tuple(key.split(":", 1))
        if pair not in await _properties(ctx):
            raise missing
        return e.observed_property(ctx.base, *pair)
    if entity_set == "Observations":
        return await _observation(ctx, key)
    if entity_set == "Datastreams":
        device_id, metric = e.split_datastream(key)
        rows = await _rows(ctx, device_id=device_id, metric=metric, per_metric=True, limit=1)
    else:
        rows = await _rows(ctx, device_id=key, located=entity_set == "Locations", limit=1)
    if not rows:
        raise missing
    found = [e.render(ctx.base, entity_set, rows[0])]
    if expand is not None:
        found = await _expanded(ctx, entity_set, rows, expand)
    return found[0]


async def _navigate(ctx: _Ctx, head: Segment, nav: str) -> dict[str, Any]:
    assert head.id is not None
    target = _NAV.get(nav)
    if head.name == "Datastreams" and target in ("Things", "Sensors", "ObservedProperties"):
        device_id, metric = e.split_datastream(head.id)
        row = await _one_datastream(ctx, head.id)
        key = {"Things": device_id, "Sensors": row[1],
               "ObservedProperties": e.observed_property_id(row[1], metric)}[target]  # fmt: skip
        return e.selected(await _entity(ctx, target, key), ctx.options(target).select)
    if head.name == "Observations" and nav == "Datastream":
        device_id, metric, _ = e.split_observation(head.id)
        await _entity(ctx, "Observations", head.id)
        return await _entity(ctx, "Datastreams", e.datastream_id(device_id, metric))
    if head.name == "Datastreams" and nav == "Observations":
        return await _observations(ctx, await _one_datastream(ctx, head.id))
    filters: dict[tuple[str, str], dict[str, Any]] = {
        ("Things", "Datastreams"): {"device_id": head.id},
        ("Things", "Locations"): {"device_id": head.id},
        ("Locations", "Things"): {"device_id": head.id, "located": True},
        ("Sensors", "Datastreams"): {"device_type": head.id},
        ("ObservedProperties", "Datastreams"): dict(
            zip(("device_type", "metric"), head.id.split(":", 1), strict=False)
        ),
    }
    if (head.name, nav) not in filters:
        if nav in _NAVIGATION[head.name]:
            raise ApiError(NOT_IMPLEMENTED, "not_implemented", f"{nav} are not served yet")
        raise ApiError(NOT_FOUND, "unknown_resource", f"{head.name} have no {nav}")
    await _entity(ctx, head.name, head.id)  # the head must be visible: else a 404
    return await _devices(ctx, nav, **filters[(head.name, nav)])


async def _devices(ctx: _Ctx, entity_set: str, **where: Any) -> dict[str, Any]:
    opts = ctx.options(entity_set)
    per_metric = entity_set == "Datastreams"
    located = entity_set == "Locations" or where.pop("located", False)
    rows = await _rows(
        ctx, per_metric=per_metric, located=located, limit=opts.top, offset=opts.skip, **where
    )
    total = rows[0][-1] if rows else 0
    if not rows and opts.count:
        probe = await _rows(ctx, per_metric=per_metric, located=located, limit=1, **where)
        total = probe[0][-1] if probe else 0
    found = await _expanded(ctx, entity_set, rows, opts)
    return _page(ctx, opts, found, more=opts.skip + len(rows) < total, total=total)


def _listed(ctx: _Ctx, entity_set: str, found: list[dict[str, Any]]) -> dict[str, Any]:
    """A page of a short list known without reading the store (the catalog's entries)."""
    opts = ctx.options(entity_set)
    page = [e.selected(x, opts.select) for x in found[opts.skip : opts.skip + opts.top]]
    return _page(ctx, opts, page, more=opts.skip + opts.top < len(found), total=len(found))


async def _one_datastream(ctx: _Ctx, key: str) -> tuple[Any, ...]:
    device_id, metric = e.split_datastream(key)
    rows = await _rows(ctx, device_id=device_id, metric=metric, per_metric=True, limit=1)
    if not rows:
        raise e.missing("Datastreams", key)
    return tuple(rows[0])


async def _observations(ctx: _Ctx, row: tuple[Any, ...]) -> dict[str, Any]:
    opts = ctx.options("Observations", observations=True)
    view = ctx.views[row[9]]
    scope = narrowed(view, row[0], row[8], opts.filter)
    query, params = store_query.raw(
        scope, limit=opts.top + 1, offset=opts.skip, total=opts.count,
        direction="desc" if opts.descending else "asc",
    )  # fmt: skip
    cur = await ctx.conn.execute(query, params)
    fetched = await cur.fetchall()
    # With $count every row ends with the count, and an empty page is one row of NULLs.
    total = (int(fetched[0][-1]) if fetched else 0) if opts.count else None
    rows = [r for r in fetched if r[0] is not None]
    more = len(rows) > opts.top
    rows = rows[: opts.top]
    device_id, device_type, metric = row[0], row[1], row[8]
    found = [
        e.selected(e.observation(ctx.base, device_type, device_id, metric, r[0], r[4]), opts.select)
        for r in rows
    ]
    await _record_read(ctx, view, device_type, len(found))
    return _page(ctx, opts, found, more=more, total=total)


async def _all_observations(ctx: _Ctx) -> dict[str, Any]:
    """Every Observation the caller sees, across its Datastreams: one statement."""
    opts = ctx.options("Observations", observations=True)
    if opts.count:
        raise ApiError(
            NOT_IMPLEMENTED, "not_implemented",
            "$count on the Observations collection: count per Datastream",
        )  # fmt: skip
    if opts.filter is not None and names_result(opts.filter):
        raise ApiError(
            NOT_IMPLEMENTED, "not_implemented",
            "$filter on result across Datastreams: filter /Datastreams('id')/Observations",
        )  # fmt: skip
    scopes = [dataclasses.replace(v.scope, where=opts.filter) for v in ctx.views]
    query, params = store_query.readings(
        scopes, limit=opts.top + 1, offset=opts.skip,
        direction="desc" if opts.descending else "asc",
    )  # fmt: skip
    cur = await ctx.conn.execute(query, params)
    rows = await cur.fetchall()
    found = [
        e.selected(e.observation(ctx.base, t, device_id, metric, at, v), opts.select)
        for at, device_id, t, metric, v in rows[: opts.top]
    ]
    grants = sorted({v.grant.id for v in ctx.views if v.grant is not None})
    await audit.record(
        ctx.conn,
        audit.Event(
            ctx.caller.principal, "sta.read", ctx.caller.service, ctx.caller.principal, None,
            None, len(found), {"grants": grants, "path": ctx.request.url.path},
        ),
    )  # fmt: skip
    return _page(ctx, opts, found, more=len(rows) > opts.top, total=None)


async def _observation(ctx: _Ctx, key: str) -> dict[str, Any]:
    device_id, metric, at = e.split_observation(key)
    row = await _one_datastream(ctx, e.datastream_id(device_id, metric))
    view = ctx.views[row[9]]
    query, params = store_query.raw(
        narrowed(view, row[0], row[8], None), start=at, end=at + timedelta(microseconds=1), limit=1
    )
    cur = await ctx.conn.execute(query, params)
    found = await cur.fetchone()
    if found is None:
        raise e.missing("Observations", key)
    await _record_read(ctx, view, row[1], 1)
    return e.observation(ctx.base, row[1], device_id, metric, found[0], found[4])


async def _record_read(ctx: _Ctx, view: View, device_type: str, count: int) -> None:
    g = view.grant
    await audit.record(
        ctx.conn,
        audit.Event(
            ctx.caller.principal, "sta.read", g.owner if g else ctx.caller.service,
            ctx.caller.principal, g.id if g else None, None, count,
            {"device_type": device_type, "path": ctx.request.url.path},
        ),
    )  # fmt: skip


async def _expanded(
    ctx: _Ctx, entity_set: str, rows: Sequence[Any], opts: Options
) -> list[dict[str, Any]]:
    scopes = [v.scope for v in ctx.views]
    return await expanded(ctx.conn, scopes, ctx.base, entity_set, rows, opts)


async def _rows(ctx: _Ctx, **where: Any) -> list[Any]:
    query, params = store_query.devices([v.scope for v in ctx.views], **where)
    cur = await ctx.conn.execute(query, params)
    return list(await cur.fetchall())


async def _types(ctx: _Ctx) -> list[str]:
    """The device types of the devices the caller sees, in catalog order."""
    present = {t for t, _ in await _kinds(ctx, per_metric=False)}
    return [t for t in READINGS_TABLES if t in present]


async def _properties(ctx: _Ctx) -> list[tuple[str, str]]:
    """The (device type, metric) of the Datastreams the caller sees, in catalog order."""
    present = set(await _kinds(ctx, per_metric=True))
    return [(t, m) for t in READINGS_TABLES for m in READINGS_TABLES[t].metric_columns
            if (t, m) in present]  # fmt: skip


async def _kinds(ctx: _Ctx, *, per_metric: bool) -> list[tuple[str, str]]:
    query, params = store_query.devices([v.scope for v in ctx.views], per_metric=per_metric)
    wrapped = sql.SQL("SELECT DISTINCT x.device_type, x.metric FROM ({}) x").format(query)
    cur = await ctx.conn.execute(wrapped, params)
    return [(t, m) for t, m in await cur.fetchall()]


def _page(
    ctx: _Ctx, opts: Options, found: list[dict[str, Any]], *, more: bool, total: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if opts.count and total is not None:
        body["@iot.count"] = total
    body["value"] = found
    # `$top=0` asks for the count alone: a next page of nothing would never end.
    if more and opts.top > 0:
        body["@iot.nextLink"] = ctx.next_link(opts)
    return body


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + ROOT
