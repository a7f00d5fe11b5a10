"""`$expand`, one level deep: the entities a registry row already holds (a Datastream's Thing,
Sensor and ObservedProperty, a Location's Thing, a Thing's Location), and a page of Things'
Datastreams read in one query for the whole page."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from store import query as store_query
from streams.sta import entities as e
from streams.sta.entities import DeviceRow
from streams.sta.options import Options


async def expanded(
    conn: psycopg.AsyncConnection[Any],
    scopes: Sequence[store_query.Scope],
    base: str,
    entity_set: str,
    rows: Sequence[DeviceRow],
    opts: Options,
) -> list[dict[str, Any]]:
    """The rows as entities, `$select`ed, with the `$expand`ed ones inline."""
    found = [e.selected(e.render(base, entity_set, r), opts.select) for r in rows]
    streams: dict[str, list[dict[str, Any]]] = {}
    if "Datastreams" in opts.expand and rows:
        # The caller's scopes narrowed to the page's devices: what it may see of them, at once.
        page = tuple(r[0] for r in rows)
        narrowed = [dataclasses.replace(s, device_ids=page) for s in scopes]
        query, params = store_query.devices(narrowed, per_metric=True)
        cur = await conn.execute(query, params)
        for r in await cur.fetchall():
            streams.setdefault(r[0], []).append(e.datastream(base, r))
    for entity, r in zip(found, rows, strict=True):
        for name in opts.expand:
            entity[name] = _inline(base, name, r, streams)
    return found


def _inline(
    base: str, name: str, row: DeviceRow, streams: Mapping[str, list[dict[str, Any]]]
) -> Any:
    if name == "Datastreams":
        return streams.get(row[0], [])
    if name == "Locations":
        return [e.location(base, row)] if row[5] is not None and row[6] is not None else []
    if name == "Things":
        return [e.thing(base, row)]
    if name == "Thing":
        return e.thing(base, row)
    if name == "Sensor":
        return e.sensor(base, row[1])
    return e.observed_property(base, row[1], row[8])
