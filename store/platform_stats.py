"""Platform health figures in the store: per ingest process and per city, every 10 seconds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg

logger = logging.getLogger(__name__)

# Every reason a dead letter can have (ingest.decode.REASONS): decode's five in contract
# order, then the store's refusal (migration 0042). One column each in platform_stats.
REASONS: Final = (
    "payload_too_large",
    "malformed_payload",
    "unknown_device",
    "schema_violation",
    "timestamp_out_of_range",
    "store_refused",
)
_INGEST_COLUMNS: Final = (
    "time", "source", "window_s", "received", "stored", "duplicates",
    *(f"rejected_{r}" for r in REASONS),
    "pending", "batches", "commit_s", "store_up",
)  # fmt: skip
_INSERT_INGEST: Final = (
    f"INSERT INTO platform_stats ({', '.join(_INGEST_COLUMNS)})"  # noqa: S608 - constant columns
    f" VALUES ({', '.join(['%s'] * len(_INGEST_COLUMNS))}) ON CONFLICT DO NOTHING"
)
# The first recorder to reach a slot writes the city's row; the others' inserts conflict.
# Deliveries are counted by audit id after the previous row's, so none is counted twice.
_INSERT_FLEET: Final = """
WITH prev AS (
    SELECT coalesce(max(audit_upto), 0) AS upto FROM platform_fleet_stats
    WHERE time = (SELECT max(time) FROM platform_fleet_stats WHERE time < %(at)s)
), delivered AS (
    SELECT count(*) AS batches, coalesce(sum(a.readings), 0) AS readings,
           coalesce(max(a.id), (SELECT upto FROM prev)) AS upto
    FROM audit_log a
    WHERE a.id > (SELECT upto FROM prev) AND a.action = 'delivery.batch'
), online AS (
    SELECT count(*) FILTER (WHERE connection = 'online') AS online,
           count(*) FILTER (WHERE connection = 'offline') AS offline
    FROM devices WHERE lifecycle = 'active'
)
INSERT INTO platform_fleet_stats
    (time, window_s, devices_online, devices_offline, deliveries, delivered_readings, audit_upto)
SELECT %(at)s, %(window)s, online.online, online.offline, delivered.batches,
       delivered.readings, delivered.upto
FROM online, delivered
ON CONFLICT (time) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class IngestWindow:
    """What one ingest process did in one window, and its state at the window's end."""

    time: datetime
    source: str
    window: timedelta
    received: int
    stored: int
    duplicates: int
    rejected: Mapping[str, int] = field(default_factory=dict)
    pending: int = 0
    batches: int = 0
    commit_s: float | None = None  # mean commit time of the window's batches
    store_up: bool = True

    def row(self) -> tuple[Any, ...]:
        return (
            self.time, self.source, self.window.total_seconds(), self.received, self.stored,
            self.duplicates, *(int(self.rejected.get(r, 0)) for r in REASONS), self.pending,
            self.batches, self.commit_s, self.store_up,
        )  # fmt: skip


async def record_ingest(conn: psycopg.AsyncConnection[Any], window: IngestWindow) -> None:
    """Store one process's window (once: a retried insert of the same window is a no-op)."""
    await conn.execute(_INSERT_INGEST, window.row())


async def record_fleet(
    conn: psycopg.AsyncConnection[Any], *, at: datetime, window: timedelta
) -> bool:
    """Store the city's figures for the slot ending at `at`; False if another recorder did."""
    cur = await conn.execute(_INSERT_FLEET, {"at": at, "window": window.total_seconds()})
    return cur.rowcount == 1


async def prune(conn: psycopg.AsyncConnection[Any], *, before: datetime) -> int:
    """Remove figures older than `before`; returns the rows removed."""
    removed = 0
    for table in ("platform_stats", "platform_fleet_stats"):
        cur = await conn.execute(
            f"DELETE FROM {table} WHERE time < %s",  # noqa: S608 - the two constant names above
            (before,),
        )
        removed += max(cur.rowcount, 0)
    return removed
