"""Helpers for the store's read, rollup, retention and TimescaleDB tests: data and schemas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from devices.registry import new_record
from store.maintain import refresh_range, refresh_rollups
from store.migrate import migrate, store_backend
from store.registry import upsert_devices
from store.schema import READINGS_TABLES
from store.writer import InsertMode, ReadingsWriter, Row
from tests.support.timescale import LocalTimescale

Conn = psycopg.Connection[TupleRow]
# A whole hour, so 1-hour buckets line up with the data.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def write(url: str, rows: Mapping[str, Sequence[Row]], *, mode: InsertMode = "copy") -> int:
    """Store rows through the production writer; returns the rows stored."""

    async def go() -> int:
        writer = ReadingsWriter(url, insert_mode=mode)
        try:
            return (await writer.write(rows)).stored
        finally:
            await writer.close()

    return asyncio.run(go())


def register(conn: Conn, devices: Sequence[tuple[str, str, str, str]]) -> None:
    """(device_id, device_type, service, district) each."""
    upsert_devices(conn, [new_record(d, t, s, district=z) for d, t, s, z in devices])


def city(prefix: str) -> list[tuple[str, str, str, str]]:
    """Three air sensors in two districts, two streetlights, two meters of two services."""
    return [
        (f"{prefix}air-1", "air_sensor", "environment", "north"),
        (f"{prefix}air-2", "air_sensor", "environment", "north"),
        (f"{prefix}air-3", "air_sensor", "environment", "south"),
        (f"{prefix}lamp-1", "streetlight", "lighting", "north"),
        (f"{prefix}lamp-2", "streetlight", "lighting", "south"),
        (f"{prefix}meter-e", "meter", "energy", "north"),
        (f"{prefix}meter-w", "meter", "water", "north"),
    ]


def readings(prefix: str, start: datetime, minutes: int, every: int = 7) -> dict[str, list[Row]]:
    """Rows for city(prefix) from `start`, one per device every `every` minutes (offset per
    device), some metrics missing. Values are multiples of 1/4, so sums are exact in any order
    and both backends' averages agree to the last bit."""
    out: dict[str, list[Row]] = {"air_sensor": [], "streetlight": [], "meter": []}
    for k in range(0, minutes, every):
        for i in (1, 2, 3):
            at = start + timedelta(minutes=k, seconds=11 * i)
            pm25 = (k * i % 37) / 4
            no2 = None if k % 3 == 0 else (k + i) % 50 / 4
            out["air_sensor"].append(
                (at, f"{prefix}air-{i}", "environment", pm25, None, no2, None, 20 + i / 4, None)
            )
        for i in (1, 2):
            at = start + timedelta(minutes=k, seconds=5 * i)
            on = 1 if (k // 60) % 2 else 0
            out["streetlight"].append((at, f"{prefix}lamp-{i}", "lighting", on, 50.0, on * 40.25))
        for name, service in (("e", "energy"), ("w", "water")):
            at = start + timedelta(minutes=k, seconds=3)
            out["meter"].append((at, f"{prefix}meter-{name}", service, k / 4, 1.5))
    return out


@contextmanager
def timescale_schema(server: LocalTimescale) -> Iterator[Conn]:
    """A migrated TimescaleDB store in a schema of its own, dropped after (with its jobs).

    The server shares one session between connections, so search_path set here is every
    connection's: tests on one server must run one at a time (they do: one module, no xdist).
    """
    schema = sql.Identifier(f"t_{uuid.uuid4().hex[:10]}")
    schemas = "SELECT nspname FROM pg_namespace"
    with server.connect() as conn:
        before = {r[0] for r in conn.execute(schemas).fetchall()}
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(sql.SQL("SET search_path TO {}, public").format(schema))
        try:
            migrate(server.url, backend="timescale")
            yield conn
        finally:
            # The test's schema, and any a migration made by name (0031 makes `governed`).
            for name in {r[0] for r in conn.execute(schemas).fetchall()} - before:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
            conn.execute("RESET search_path")


def refresh_aggregates(conn: Conn) -> int:
    """Every aggregate up to date now, on either backend, as the upkeep leaves them after a
    day with no settle time: the plain rollups recomputed (returns the pieces), or each
    type's continuous aggregates refreshed over its readings' range (returns the types)."""
    if store_backend(conn) == "plain":
        return refresh_rollups(conn, settle=timedelta(0))
    refreshed = 0
    for device_type, table in READINGS_TABLES.items():
        span = conn.execute(
            sql.SQL("SELECT min(time), max(time) FROM {}").format(sql.Identifier(table.name))
        ).fetchone()
        if span is not None and span[0] is not None:
            refresh_range(conn, [device_type], span[0], span[1])
            refreshed += 1
    return refreshed


def aggregate_watermark(conn: Conn, device_types: Sequence[str]) -> datetime | None:
    """Below this reading time the 1-minute aggregates of `device_types` are stored, not
    computed from raw rows at read time (the oldest of their watermarks)."""
    if store_backend(conn) == "plain":
        row = conn.execute(
            "SELECT min(watermark) FROM rollup_state WHERE relation = ANY(%s)",
            ([READINGS_TABLES[t].name for t in device_types],),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT min(_timescaledb_functions.to_timestamp("
            "_timescaledb_functions.cagg_watermark(mat_hypertable_id)))"
            " FROM _timescaledb_catalog.continuous_agg WHERE user_view_name = ANY(%s)",
            ([f"agg_1m_{t}" for t in device_types],),
        ).fetchone()
    return row[0] if row else None


def ensure_partitions(conn: Conn, table: str, first: date, last: date) -> None:
    """Create `table`'s partitions for the days [first, last] now, so that inserts in open
    transactions do not wait on one another's: plain daily partitions as the writer makes
    them, or TimescaleDB chunks (made by a row that is then deleted, committed at once)."""
    if store_backend(conn) == "plain":
        conn.execute(
            "SELECT silobreak_ensure_partitions(%s, %s::date, %s::date)", (table, first, last)
        )
        return
    days = [datetime.combine(first, time(), UTC) + timedelta(days=k)
            for k in range((last - first).days + 1)]  # fmt: skip
    with conn.transaction():
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (time, device_id, service) SELECT t, '', '' FROM unnest(%s) t"
            ).format(sql.Identifier(table)),
            (days,),
        )
        conn.execute(sql.SQL("DELETE FROM {} WHERE device_id = ''").format(sql.Identifier(table)))


def fetch(conn: Conn, query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()
