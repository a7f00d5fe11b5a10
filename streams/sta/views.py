"""What one SensorThings caller may see, as the store's scopes: its own service's devices and
what its live raw grants cover. Nothing else exists for it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from store import query as store_query
from store.errors import StoreError
from store.schema import READINGS_TABLES
from streams import grants
from streams.auth import Caller
from streams.errors import ApiError
from streams.scope import RAW, Grant, narrow


@dataclass(frozen=True, slots=True)
class View:
    """One scope of the caller's, and the grant it reads under (None: its own devices)."""

    scope: store_query.Scope
    grant: Grant | None


async def views(conn: psycopg.AsyncConnection[Any], caller: Caller) -> list[View]:
    """The caller's scopes, its own first: the same grant → scope rule history applies.

    Aggregate grants are left out: their devices' raw observations are reachable by no URL
    (their aggregate Datastreams are not served yet)."""
    out: list[View] = []
    if caller.service is not None:
        out += [
            View(store_query.Scope(device_type, owners=(caller.service,)), None)
            for device_type in READINGS_TABLES
        ]
    now = datetime.now(UTC)
    for grant in await grants.visible_to(conn, caller, status="active"):
        if grant.consumer != caller.principal or grant.granularity != RAW:
            continue
        if not grant.is_live(now):
            continue
        out += [
            View(narrow(grant, device_type).store_scope(), grant)
            for device_type in grant.device_types
            if device_type in READINGS_TABLES
        ]
    return out


def narrowed(
    view: View, device_id: str, metric: str, where: store_query.Filter | None
) -> store_query.Scope:
    """The view's scope narrowed to one Datastream (device and metric), with the filter's
    `result` bound to the metric's column."""
    try:
        return dataclasses.replace(
            view.scope, device_ids=(device_id,), metrics=(metric,),
            where=None if where is None else _bind(where, metric),
        )  # fmt: skip
    except StoreError as exc:
        raise ApiError(400, "bad_filter", str(exc)) from None


def names_result(f: store_query.Filter) -> bool:
    """Whether a filter compares `result` anywhere (the metric it means is per Datastream)."""
    if isinstance(f, store_query.Cmp):
        return f.field == "result"
    if isinstance(f, store_query.Not):
        return names_result(f.part)
    return any(names_result(x) for x in f.parts)


def _bind(f: store_query.Filter, metric: str) -> store_query.Filter:
    if isinstance(f, store_query.Cmp):
        return dataclasses.replace(f, field=metric) if f.field == "result" else f
    if isinstance(f, store_query.Not):
        return store_query.Not(_bind(f.part, metric))
    parts = tuple(_bind(x, metric) for x in f.parts)
    return store_query.And(parts) if isinstance(f, store_query.And) else store_query.Or(parts)
