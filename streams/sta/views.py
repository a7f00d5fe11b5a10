"""What one SensorThings caller may see, as the store's scopes: its own service's devices and
what its live raw grants cover. Nothing else exists for it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from store import query as store_query
from store.schema import READINGS_TABLES
from streams import grants
from streams.auth import Caller
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
