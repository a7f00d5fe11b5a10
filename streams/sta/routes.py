"""`/sta/v1.1`: the OGC SensorThings API 1.1 read side, under the caller's grants.

One route takes every resource path and one parser reads it, so the route table has one
path parameter. An id the caller may not see answers 404 exactly as an id that does not
exist, and the attempt is on record. Observations are read through the store's one query
builder, one statement per page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from psycopg import sql

from store import query as store_query
from store.schema import READINGS_TABLES
from streams import audit
from streams.errors import ApiError
from streams.sta import entities as e
from streams.sta import observations
from streams.sta.auth import StaCallerDep
from streams.sta.context import NAVIGATION, Ctx, device_rows, one_datastream, page
from streams.sta.expand import expanded
from streams.sta.options import (
    NOT_FOUND,
    NOT_IMPLEMENTED,
    Options,
    Segment,
    parse_path,
)
from streams.sta.views import views

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/sta/v1.1", tags=["sensorthings"])

ROOT: Final = "/sta/v1.1"
ENTITY_SETS: Final = ("Things", "Locations", "Datastreams", "Sensors", "ObservedProperties",
                      "Observations", "FeaturesOfInterest")  # fmt: skip
NOT_SERVED: Final = ("HistoricalLocations",)
CONFORMANCE: Final = (
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
)
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
        ctx = Ctx(conn, caller, await views(conn, caller), _base(request), request)
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


async def _resolve(ctx: Ctx, segments: Sequence[Segment]) -> dict[str, Any]:
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


async def _collection(ctx: Ctx, entity_set: str) -> dict[str, Any]:
    if entity_set == "Observations":
        return await observations.all_observations(ctx)
    if entity_set == "Sensors":
        return _listed(ctx, "Sensors", [e.sensor(ctx.base, t) for t in await _types(ctx)])
    if entity_set == "ObservedProperties":
        found = [e.observed_property(ctx.base, t, m) for t, m in await _properties(ctx)]
        return _listed(ctx, "ObservedProperties", found)
    return await _devices(ctx, entity_set)


async def _entity(
    ctx: Ctx, entity_set: str, key: str, *, expand: Options | None = None
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
        return await observations.by_id(ctx, key)
    if entity_set == "Datastreams":
        device_id, metric = e.split_datastream(key)
        rows = await device_rows(ctx, device_id=device_id, metric=metric, per_metric=True, limit=1)
    else:
        rows = await device_rows(ctx, device_id=key, located=entity_set == "Locations", limit=1)
    if not rows:
        raise missing
    found = [e.render(ctx.base, entity_set, rows[0])]
    if expand is not None:
        found = await _expanded(ctx, entity_set, rows, expand)
    return found[0]


async def _navigate(ctx: Ctx, head: Segment, nav: str) -> dict[str, Any]:
    assert head.id is not None
    target = _NAV.get(nav)
    if head.name == "Datastreams" and target in ("Things", "Sensors", "ObservedProperties"):
        device_id, metric = e.split_datastream(head.id)
        row = await one_datastream(ctx, head.id)
        key = {"Things": device_id, "Sensors": row[1],
               "ObservedProperties": e.observed_property_id(row[1], metric)}[target]  # fmt: skip
        return e.selected(await _entity(ctx, target, key), ctx.options(target).select)
    if head.name == "Observations" and nav == "Datastream":
        device_id, metric, _ = e.split_observation(head.id)
        await _entity(ctx, "Observations", head.id)
        return await _entity(ctx, "Datastreams", e.datastream_id(device_id, metric))
    if head.name == "Datastreams" and nav == "Observations":
        return await observations.of_datastream(ctx, await one_datastream(ctx, head.id))
    if head.name == "Observations" and nav == "FeatureOfInterest":
        await _entity(ctx, "Observations", head.id)
        return await _entity(ctx, "FeaturesOfInterest", e.split_observation(head.id)[0])
    if head.name == "FeaturesOfInterest" and nav == "Observations":
        await _entity(ctx, head.name, head.id)
        return await observations.all_observations(ctx, head.id)
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
        if nav in NAVIGATION[head.name]:
            raise ApiError(NOT_IMPLEMENTED, "not_implemented", f"{nav} are not served yet")
        raise ApiError(NOT_FOUND, "unknown_resource", f"{head.name} have no {nav}")
    await _entity(ctx, head.name, head.id)  # the head must be visible: else a 404
    return await _devices(ctx, nav, **filters[(head.name, nav)])


async def _devices(ctx: Ctx, entity_set: str, **where: Any) -> dict[str, Any]:
    opts = ctx.options(entity_set)
    per_metric = entity_set == "Datastreams"
    located = entity_set == "Locations" or where.pop("located", False)
    rows = await device_rows(
        ctx, per_metric=per_metric, located=located, limit=opts.top, offset=opts.skip, **where
    )
    total = rows[0][-1] if rows else 0
    if not rows and opts.count:
        probe = await device_rows(ctx, per_metric=per_metric, located=located, limit=1, **where)
        total = probe[0][-1] if probe else 0
    found = await _expanded(ctx, entity_set, rows, opts)
    return page(ctx, opts, found, more=opts.skip + len(rows) < total, total=total)


def _listed(ctx: Ctx, entity_set: str, found: list[dict[str, Any]]) -> dict[str, Any]:
    """A page of a short list known without reading the store (the catalog's entries)."""
    opts = ctx.options(entity_set)
    chunk = [e.selected(x, opts.select) for x in found[opts.skip : opts.skip + opts.top]]
    return page(ctx, opts, chunk, more=opts.skip + opts.top < len(found), total=len(found))


async def _expanded(
    ctx: Ctx, entity_set: str, rows: Sequence[Any], opts: Options
) -> list[dict[str, Any]]:
    scopes = [v.scope for v in ctx.views]
    return await expanded(ctx.conn, scopes, ctx.base, entity_set, rows, opts)


async def _types(ctx: Ctx) -> list[str]:
    """The device types of the devices the caller sees, in catalog order."""
    present = {t for t, _ in await _kinds(ctx, per_metric=False)}
    return [t for t in READINGS_TABLES if t in present]


async def _properties(ctx: Ctx) -> list[tuple[str, str]]:
    """The (device type, metric) of the Datastreams the caller sees, in catalog order."""
    present = set(await _kinds(ctx, per_metric=True))
    return [(t, m) for t in READINGS_TABLES for m in READINGS_TABLES[t].metric_columns
            if (t, m) in present]  # fmt: skip


async def _kinds(ctx: Ctx, *, per_metric: bool) -> list[tuple[str, str]]:
    query, params = store_query.devices([v.scope for v in ctx.views], per_metric=per_metric)
    wrapped = sql.SQL("SELECT DISTINCT x.device_type, x.metric FROM ({}) x").format(query)
    cur = await ctx.conn.execute(wrapped, params)
    return [(t, m) for t, m in await cur.fetchall()]


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + ROOT
