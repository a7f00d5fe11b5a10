"""Raw readings under a scope, paged by key: history reads and the replay of subscriptions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from streams import cursor
from streams.scope import Scope

logger = logging.getLogger(__name__)

# A wide row in: time, device_id, service, district, then the scope's metrics.
WideRow = tuple[Any, ...]
_FIXED: Final = 4


@dataclass(frozen=True, slots=True)
class RowKey:
    """The last (time, device_id) of a page: the next page starts after it."""

    time: datetime
    device_id: str


async def raw_page(
    conn: psycopg.AsyncConnection[Any],
    scope: Scope,
    *,
    start: datetime | None,
    end: datetime | None,
    after: RowKey | None,
    limit: int,
    committed_before: str | None = None,
) -> list[WideRow]:
    """Up to `limit` wide rows of `scope`, in (time, device_id) order, after `after`.

    `committed_before` (a snapshot) keeps only rows whose writing transaction it saw: a
    replay reads exactly the history that preceded its live cursor, in any later transaction.
    """
    where, params = scope.where()
    conds = [where]
    if start is not None:
        conds.append(sql.SQL("r.time >= %(start)s"))
        params["start"] = start
    if end is not None:
        conds.append(sql.SQL("r.time < %(end)s"))
        params["end"] = end
    if after is not None:
        conds.append(sql.SQL("(r.time, r.device_id) > (%(a_time)s, %(a_dev)s)"))
        params.update(a_time=after.time, a_dev=after.device_id)
    if committed_before is not None:
        conds.append(sql.SQL(cursor.UPTO))
        params["upto"] = committed_before
    params["limit"] = limit
    query = sql.SQL(
        "SELECT r.time, r.device_id, r.service, d.district, {metrics}"
        " FROM {table} r JOIN devices d USING (device_id)"
        " WHERE {conds} ORDER BY r.time, r.device_id LIMIT %(limit)s"
    ).format(
        metrics=metric_columns(scope.metrics),
        table=sql.Identifier(scope.table),
        conds=sql.SQL(" AND ").join(conds),
    )
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def committed_after(
    conn: psycopg.AsyncConnection[Any],
    scope: Scope,
    *,
    prev: str,
    upto: str | None,
    after: RowKey | None = None,
    limit: int | None = None,
) -> list[WideRow]:
    """Rows of `scope` committed after snapshot `prev` (and before `upto`, when given), in
    (time, device_id) order; with `limit`, a page of them after `after` (paging needs `upto`:
    with both snapshots fixed the set of rows is too)."""
    where, params = scope.where()
    conds = [where, sql.SQL(cursor.AFTER)]
    params["prev"] = prev
    if upto is not None:
        conds.append(sql.SQL(cursor.UPTO))
        params["upto"] = upto
    if after is not None:
        conds.append(sql.SQL("(r.time, r.device_id) > (%(a_time)s, %(a_dev)s)"))
        params.update(a_time=after.time, a_dev=after.device_id)
    page = sql.SQL("")
    if limit is not None:
        page = sql.SQL(" LIMIT %(limit)s")
        params["limit"] = limit
    query = sql.SQL(
        "SELECT r.time, r.device_id, r.service, d.district, {metrics}"
        " FROM {table} r JOIN devices d USING (device_id)"
        " WHERE {conds} ORDER BY r.time, r.device_id{page}"
    ).format(
        metrics=metric_columns(scope.metrics),
        table=sql.Identifier(scope.table),
        conds=sql.SQL(" AND ").join(conds),
        page=page,
    )
    cur = await conn.execute(query, params)
    return await cur.fetchall()


def metric_columns(metrics: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(m)) for m in metrics)


def explode(scope: Scope, rows: Sequence[WideRow]) -> list[dict[str, Any]]:
    """One reading per metric with a value, as the API delivers them."""
    out = []
    device_type = scope.device_type
    for row in rows:
        at, device_id, service, district = row[:_FIXED]
        for metric, value in zip(scope.metrics, row[_FIXED:], strict=True):
            if value is not None:
                out.append(
                    {
                        "time": at,
                        "device_id": device_id,
                        "device_type": device_type,
                        "service": service,
                        "district": district,
                        "metric": metric,
                        "value": float(value),
                    }
                )
    return out
