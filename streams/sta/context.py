"""What one SensorThings request works with: its connection, caller, scopes and options, and
the page it answers with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

import psycopg
from fastapi import Request

from store import query as store_query
from streams.auth import Caller
from streams.errors import ApiError
from streams.sta import entities as e
from streams.sta.options import NOT_IMPLEMENTED, Options, parse_options
from streams.sta.views import View

FIELDS: Final = {
    "Things": e.THING_FIELDS, "Locations": e.LOCATION_FIELDS,
    "Datastreams": e.DATASTREAM_FIELDS, "Sensors": e.SENSOR_FIELDS,
    "ObservedProperties": e.PROPERTY_FIELDS, "Observations": e.OBSERVATION_FIELDS,
    "FeaturesOfInterest": e.FEATURE_FIELDS,
}  # fmt: skip
# Each entity set's navigation properties, and those `$expand` serves (one level, no options).
NAVIGATION: Final = {
    "Things": {"Datastreams", "Locations", "HistoricalLocations"},
    "Locations": {"Things", "HistoricalLocations"},
    "Datastreams": {"Thing", "Sensor", "ObservedProperty", "Observations"},
    "Sensors": {"Datastreams"}, "ObservedProperties": {"Datastreams"},
    "Observations": {"Datastream", "FeatureOfInterest"},
    "FeaturesOfInterest": {"Observations"},
}  # fmt: skip
EXPANDABLE: Final = {"Things": {"Datastreams", "Locations"}, "Locations": {"Things"},
                      "Datastreams": {"Thing", "Sensor", "ObservedProperty"}}  # fmt: skip
# Kept as they are in a nextLink's query (OData's own characters), so the link reads as sent.
_SAFE: Final = "$'(),:"


@dataclass(frozen=True, slots=True)
class Ctx:
    conn: psycopg.AsyncConnection[Any]
    caller: Caller
    views: list[View]
    base: str
    request: Request

    def options(self, entity_set: str, *, observations: bool = False) -> Options:
        opts = parse_options(
            self.request.query_params, orderable=observations, filterable=observations,
            fields=FIELDS[entity_set],
        )  # fmt: skip
        for name in opts.expand:
            if name not in NAVIGATION[entity_set]:
                raise ApiError(400, "bad_expand", f"$expand: {entity_set} have no {name!r}")
            if name not in EXPANDABLE.get(entity_set, ()):
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


async def one_datastream(ctx: Ctx, key: str) -> tuple[Any, ...]:
    device_id, metric = e.split_datastream(key)
    rows = await device_rows(ctx, device_id=device_id, metric=metric, per_metric=True, limit=1)
    if not rows:
        raise e.missing("Datastreams", key)
    return tuple(rows[0])


async def device_rows(ctx: Ctx, **where: Any) -> list[Any]:
    query, params = store_query.devices([v.scope for v in ctx.views], **where)
    cur = await ctx.conn.execute(query, params)
    return list(await cur.fetchall())


def page(
    ctx: Ctx, opts: Options, found: list[dict[str, Any]], *, more: bool, total: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if opts.count and total is not None:
        body["@iot.count"] = total
    body["value"] = found
    # `$top=0` asks for the count alone: a next page of nothing would never end.
    if more and opts.top > 0:
        body["@iot.nextLink"] = ctx.next_link(opts)
    return body
