"""Observations under the caller's scopes: of one Datastream, by id, and across all of them,
each page one statement of the store's read path; every read is on record."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from store import query as store_query
from streams import audit
from streams.errors import ApiError
from streams.sta import entities as e
from streams.sta.context import Ctx, one_datastream, page
from streams.sta.options import NOT_IMPLEMENTED
from streams.sta.views import View, names_result, narrowed


async def of_datastream(ctx: Ctx, row: tuple[Any, ...]) -> dict[str, Any]:
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
    return page(ctx, opts, found, more=more, total=total)


async def all_observations(ctx: Ctx, device_id: str | None = None) -> dict[str, Any]:
    """Every Observation the caller sees (of one device's: `device_id`), across its
    Datastreams: one statement."""
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
    only = None if device_id is None else (device_id,)
    scopes = [dataclasses.replace(v.scope, where=opts.filter, device_ids=only or v.scope.device_ids)
              for v in ctx.views]  # fmt: skip
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
    return page(ctx, opts, found, more=len(rows) > opts.top, total=None)


async def by_id(ctx: Ctx, key: str) -> dict[str, Any]:
    device_id, metric, at = e.split_observation(key)
    row = await one_datastream(ctx, e.datastream_id(device_id, metric))
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


async def _record_read(ctx: Ctx, view: View, device_type: str, count: int) -> None:
    g = view.grant
    await audit.record(
        ctx.conn,
        audit.Event(
            ctx.caller.principal, "sta.read", g.owner if g else ctx.caller.service,
            ctx.caller.principal, g.id if g else None, None, count,
            {"device_type": device_type, "path": ctx.request.url.path},
        ),
    )  # fmt: skip
