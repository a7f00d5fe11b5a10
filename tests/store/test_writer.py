"""The write path against a real PostgreSQL: COPY, idempotent redelivery, first value wins."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from devices.registry import new_record
from store.migrate import migrate
from store.registry import list_devices, upsert_devices
from store.schema import READINGS_TABLES
from store.writer import ReadingsWriter, RejectRow

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def write(
    db_url: str, rows: dict[str, list[tuple[Any, ...]]], rejects: list[RejectRow] | None = None
) -> Any:
    async def go() -> Any:
        writer = ReadingsWriter(db_url)
        try:
            return await writer.write(rows, rejects or [])
        finally:
            await writer.close()

    return asyncio.run(go())


def readings(db_url: str, device_prefix: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "SELECT device_id, metric, time, value, service, device_type FROM readings"
            " WHERE device_id LIKE %s ORDER BY device_id, time, metric",
            (device_prefix + "%",),
        ).fetchall()


def test_migrate_is_idempotent_and_matches_the_catalog(db_url: str) -> None:
    assert migrate(db_url) == []
    with psycopg.connect(db_url) as conn:
        for table in READINGS_TABLES.values():
            cols = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (table.name,),
                )
            ]
            assert tuple(cols) == table.table_columns


def test_writer_stores_rows_visible_through_the_readings_view(
    db_url: str, device_prefix: str
) -> None:
    dev = device_prefix + "air"
    t = NOW - timedelta(minutes=1)
    result = write(
        db_url, {"air_sensor": [(t, dev, "environment", 12.5, None, 30.0, None, None, None)]}
    )
    assert (result.stored, result.duplicates) == (1, 0)
    assert readings(db_url, device_prefix) == [
        (dev, "no2", t, 30.0, "environment", "air_sensor"),
        (dev, "pm25", t, 12.5, "environment", "air_sensor"),
    ]


def test_writer_redelivery_adds_no_row(db_url: str, device_prefix: str) -> None:
    dev = device_prefix + "lamp"
    rows = [(NOW - timedelta(seconds=s), dev, "lighting", 1, 80.0, 60.0) for s in range(1, 50)]
    write(db_url, {"streetlight": rows})
    before = readings(db_url, device_prefix)
    result = write(db_url, {"streetlight": rows})
    assert (result.stored, result.duplicates) == (0, len(rows))
    assert readings(db_url, device_prefix) == before
    assert len(before) == 3 * len(rows)


def test_writer_first_value_wins_and_missing_metrics_are_filled(
    db_url: str, device_prefix: str
) -> None:
    dev = device_prefix + "air"
    t = NOW - timedelta(minutes=2)
    write(db_url, {"air_sensor": [(t, dev, "environment", 10.0, None, None, None, None, None)]})
    # Same time again: pm25 already stored (kept), no2 is new (added); in-batch repeats merge.
    result = write(
        db_url,
        {
            "air_sensor": [
                (t, dev, "environment", 99.0, None, 20.0, None, None, None),
                (t, dev, "environment", None, 5.0, 77.0, None, None, None),
            ]
        },
    )
    assert result.stored == 1
    got = {(m, v) for _, m, _, v, _, _ in readings(db_url, device_prefix)}
    assert got == {("pm25", 10.0), ("no2", 20.0), ("pm10", 5.0)}


def test_writer_creates_partitions_for_old_and_new_days(db_url: str, device_prefix: str) -> None:
    dev = device_prefix + "m"
    times = [
        NOW - timedelta(days=40),
        NOW - timedelta(days=6, hours=23),
        NOW + timedelta(minutes=4),
    ]
    write(db_url, {"meter": [(t, dev, "energy", 1.0 + i, 0.5) for i, t in enumerate(times)]})
    stored = {r[2] for r in readings(db_url, device_prefix)}
    assert stored == set(times)


def test_writer_keeps_rejects_with_payload_bytes(db_url: str, device_prefix: str) -> None:
    payload = b"\xff\x00 not json"
    write(
        db_url,
        {},
        [
            RejectRow(
                NOW,
                "devices/x/telemetry",
                device_prefix + "x",
                "malformed_payload",
                "bad\x00",
                payload,
            )
        ],
    )
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT reason, detail, payload FROM rejected_messages WHERE device_id = %s",
            (device_prefix + "x",),
        ).fetchone()
    assert row is not None
    assert (row[0], bytes(row[2])) == ("malformed_payload", payload)
    assert row[1] == "bad\\u0000"


def test_registry_upsert_updates_and_transfers(db_url: str, device_prefix: str) -> None:
    dev = device_prefix + "m1"
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert upsert_devices(conn, [new_record(dev, "meter", district="north")]) == 1
        assert upsert_devices(conn, [new_record(dev, "meter", "water", medium="water")]) == 0
        (row,) = list_devices(conn, device_type="meter", service="water")
        owners = conn.execute(
            "SELECT service FROM device_ownership WHERE device_id = %s ORDER BY valid_from", (dev,)
        ).fetchall()
    assert row.device_id == dev and row.medium == "water" and row.district is None
    assert [o[0] for o in owners] == ["energy", "water"]


def test_rows_carry_the_id_of_the_transaction_that_stored_them(
    db_url: str, device_prefix: str
) -> None:
    dev = device_prefix + "lamp"
    for s in (30, 20):
        write(
            db_url,
            {
                "streetlight": [
                    (NOW - timedelta(seconds=s + i), dev, "lighting", 1, 50.0, 40.0)
                    for i in range(3)
                ]
            },
        )
    with psycopg.connect(db_url) as conn:
        batches = conn.execute(
            "SELECT batch, count(*) FROM readings_streetlight WHERE device_id = %s"
            " GROUP BY batch ORDER BY batch",
            (dev,),
        ).fetchall()
        current = conn.execute("SELECT txid_current()").fetchone()
    assert [n for _, n in batches] == [3, 3]
    assert batches[0][0] < batches[1][0] < current[0]  # type: ignore[index]
