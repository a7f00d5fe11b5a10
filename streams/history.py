"""Raw readings under a scope, paged by key: history reads and the replay of subscriptions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

from store import query as store_query
from streams.scope import Scope

logger = logging.getLogger(__name__)

# A wide row in: time, device_id, service, district, then the scope's metrics.
WideRow = tuple[Any, ...]
_FIXED: Final = 4


RowKey = store_query.RawKey


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
    query, params = store_query.raw(
        scope.store_scope(), start=start, end=end, after=after, limit=limit,
        committed_upto=committed_before,
    )  # fmt: skip
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
    query, params = store_query.raw(
        scope.store_scope(), after=after, limit=limit, committed_after=prev,
        committed_upto=upto,
    )  # fmt: skip
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
