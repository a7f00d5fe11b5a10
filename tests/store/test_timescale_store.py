"""The store's TimescaleDB path on a real TimescaleDB.

Its migrations, policies and jobs, and the read interface: the same readings give the same
answers as on plain PostgreSQL. The server is the session's PostgreSQL when it has TimescaleDB
(each test a database of its own, as every other test), else PGlite's TimescaleDB 2.23
(tests/support/timescale: one server for the module, each test a schema of its own, writes in
the writer's `unnest` mode since it has no COPY FROM STDIN). docs/timescale-testing.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from devices.catalog import DEVICE_TYPES
from silobreak.backfill import backfill
from store.maintain import failed_jobs, maintain, refresh_range, run_jobs, set_policy
from store.migrate import Backend
from store.read import Selection
from store.reader import StoreReader
from store.writer import InsertMode
from tests.store.store_helpers import (
    NOW,
    Conn,
    city,
    fetch,
    readings,
    register,
    timescale_schema,
    write,
)
from tests.support.timescale import LocalTimescale

pytestmark = pytest.mark.integration

TYPES = tuple(DEVICE_TYPES)
START = NOW - timedelta(hours=3)
# TimescaleDB's scheduler starts a job due now within a second here; a loaded CI machine is
# much slower.
SCHEDULER_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class TimescaleStore:
    """A migrated TimescaleDB store of one test: where it is and how to write to it."""

    url: str
    conn: Conn
    mode: InsertMode


@pytest.fixture(scope="module")
def pglite(store_backend: Backend) -> Iterator[LocalTimescale | None]:
    """PGlite's TimescaleDB, unless the session's PostgreSQL is TimescaleDB itself (None)."""
    if store_backend == "timescale":
        yield None
        return
    with LocalTimescale() as server:
        assert server.create_extension().startswith("2.23")
        yield server


@pytest.fixture
def tsdb(pglite: LocalTimescale | None, request: pytest.FixtureRequest) -> Iterator[TimescaleStore]:
    if pglite is not None:
        with timescale_schema(pglite) as conn:
            yield TimescaleStore(pglite.url, conn, "unnest")
        return
    url = request.getfixturevalue("db_url")
    with psycopg.connect(url, autocommit=True) as conn:
        # These tests run each job themselves and count what it did: the server's scheduler
        # must not run them in between (the platform does not rely on it: docs/store.md).
        conn.execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
            " WHERE hypertable_schema = current_schema() OR proc_schema = current_schema()"
        )
        yield TimescaleStore(url, conn, "copy")


@pytest.fixture
def ts(tsdb: TimescaleStore) -> Conn:
    return tsdb.conn


def answers(conn: psycopg.Connection[Any], prefix: str) -> dict[str, Any]:
    """Everything the read interface says about city(prefix) over [START, NOW + 1h)."""
    reader = StoreReader(conn)
    end = NOW + timedelta(hours=1)
    out: dict[str, Any] = {}
    for device_type in ("air_sensor", "streetlight", "meter"):
        sel = Selection(device_type)
        pages, after = [], None
        while True:  # small pages: paging by key is part of what must agree
            page = reader.raw_range(sel, START, end, after=after, limit=7)
            pages.append(page.readings)
            if page.next is None:
                break
            after = page.next
        out[f"raw {device_type}"] = pages
        for step in (timedelta(minutes=1), timedelta(minutes=5), timedelta(hours=1)):
            for pool in ("device", "district"):
                key = f"{device_type} {step} {pool}"
                out[key] = reader.buckets(sel, START, end, step, pool=pool)
        out[f"latest {device_type}"] = reader.latest(sel)
    out["north pm25 1h"] = reader.buckets(
        Selection("air_sensor", ("pm25",), district="north"), START, end, timedelta(hours=1)
    )
    return out


def test_migrations_make_hypertables_aggregates_and_their_policies(ts: Conn) -> None:
    dims = dict(
        fetch(
            ts,
            "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_schema = current_schema()",
        )
    )
    assert dims == {
        "readings_streetlight": timedelta(days=1),
        "readings_traffic_light": timedelta(days=1),
        "readings_air_sensor": timedelta(days=7),
        "readings_meter": timedelta(days=1),
        "readings_noise_sensor": timedelta(days=7),
        "readings_parking_bay": timedelta(days=1),
    }
    caggs = fetch(
        ts,
        "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        " WHERE view_schema = current_schema() ORDER BY 1",
    )
    assert caggs == sorted((f"agg_{lv}_{t}", False) for lv in ("1m", "1h") for t in TYPES)
    jobs = fetch(
        ts,
        "SELECT proc_name, count(*) FROM timescaledb_information.jobs"
        " WHERE hypertable_schema = current_schema() OR proc_schema = current_schema()"
        " GROUP BY 1 ORDER BY 1",
    )
    assert jobs == [
        ("policy_compression", 2 * len(TYPES)),  # raw tables and 1-minute aggregates
        ("policy_refresh_continuous_aggregate", 2 * len(TYPES)),
        ("silobreak_retention", 1),
    ]
    settings = fetch(
        ts,
        "SELECT segmentby, orderby FROM timescaledb_information.hypertable_compression_settings"
        " WHERE hypertable = 'readings_meter'::regclass",
    )
    assert settings == [("device_id,service", '"time" DESC')]


def test_each_job_does_its_work_when_run(ts: Conn, tsdb: TimescaleStore) -> None:
    prefix = "jobs-"
    register(ts, city(prefix))
    # 12 days of meters (energy and water share chunks) and streetlights, every 2 hours.
    old = readings(prefix, NOW - timedelta(days=12), 12 * 24 * 60, every=120)
    write(tsdb.url, {"meter": old["meter"], "streetlight": old["streetlight"]}, mode=tsdb.mode)
    materialized = "SELECT count(*) FROM {} WHERE device_id LIKE 'jobs-%%'"
    hyper = _materialization(ts, "agg_1h_meter")
    assert fetch(ts, materialized.format(hyper)) == [(0,)]

    run_jobs(ts, ["refresh"])
    # The policies look 8 days back: that much is materialized, per hour and device.
    ((hours,),) = fetch(ts, materialized.format(hyper))
    assert 8 * 12 * 2 - 4 <= hours <= 8 * 12 * 2 + 4

    run_jobs(ts, ["compression"])
    chunks = (
        "SELECT count(*) FILTER (WHERE is_compressed), count(*) FROM timescaledb_information.chunks"
        " WHERE hypertable_schema = current_schema() AND hypertable_name = %s"
    )
    compressed, total = fetch(ts, chunks, "readings_meter")[0]
    assert total >= 12 and compressed >= 3  # chunks wholly older than 8 days

    set_policy(ts, "lighting", timedelta(days=5))
    set_policy(ts, "energy", timedelta(days=5))
    before = fetch(ts, chunks, "readings_streetlight")[0][1]
    run_jobs(ts, ["retention"])
    assert fetch(ts, chunks, "readings_streetlight")[0][1] < before  # lighting's days dropped
    oldest = "SELECT service, min(time) FROM readings_meter GROUP BY 1 ORDER BY 1"
    (energy, energy_min), (water, water_min) = fetch(ts, oldest)
    assert (energy, water) == ("energy", "water")
    assert energy_min >= NOW - timedelta(days=6)  # deleted from chunks water keeps alive
    assert water_min < NOW - timedelta(days=11)  # water has no policy: all of it stays


def test_same_readings_give_the_same_answers_on_both_backends(
    ts: Conn, tsdb: TimescaleStore, plain_db_url: str
) -> None:
    prefix = "same-"
    data = readings(prefix, START, 3 * 60 + 50)
    with psycopg.connect(plain_db_url, autocommit=True) as plain:
        register(plain, city(prefix))
        register(ts, city(prefix))
        write(plain_db_url, data)
        write(tsdb.url, data, mode=tsdb.mode)
        # Nothing materialized yet: both aggregate from raw rows at read time.
        realtime = answers(plain, prefix)
        assert realtime == answers(ts, prefix)
        maintain(plain)
        maintain(ts)
        refreshed = answers(plain, prefix)
        assert refreshed == answers(ts, prefix)
    assert refreshed == realtime
    assert len(refreshed["air_sensor 0:01:00 device"]) > 100
    assert {b.devices for b in refreshed["air_sensor 1:00:00 district"]} == {1, 2}


def test_a_late_reading_changes_its_hour_after_refresh_on_both_backends(
    ts: Conn, tsdb: TimescaleStore, plain_db_url: str
) -> None:
    prefix = "late-"
    data = {"air_sensor": readings(prefix, START, 3 * 60)["air_sensor"]}
    hour = Selection("air_sensor", ("pm25",), device_ids=(f"{prefix}air-1",))
    late = {"air_sensor": [(START + timedelta(seconds=1), f"{prefix}air-1", "environment",
                            1000.0, None, None, None, None, None)]}  # fmt: skip
    # Older than the refresh policies' 8-day window: only an explicit refresh (what a
    # backfill does) reaches it.
    older = START - timedelta(days=20)
    very_late = {"air_sensor": [(older, f"{prefix}air-1", "environment", 7.0, *[None] * 5)]}
    with psycopg.connect(plain_db_url, autocommit=True) as plain:
        for conn, url, mode in ((plain, plain_db_url, "copy"), (ts, tsdb.url, tsdb.mode)):
            register(conn, city(prefix))
            write(url, data, mode=mode)  # type: ignore[arg-type]
            maintain(conn)
            reader = StoreReader(conn)
            (before, *_) = reader.buckets(hour, START, NOW, timedelta(hours=1))
            write(url, late, mode=mode)  # type: ignore[arg-type]
            (unchanged, *_) = reader.buckets(hour, START, NOW, timedelta(hours=1))
            assert unchanged == before  # materialized: the late row waits for the refresh
            maintain(conn)
            (after, *_) = reader.buckets(hour, START, NOW, timedelta(hours=1))
            assert (after.max, after.count) == (1000.0, before.count + 1)

            write(url, very_late, mode=mode)  # type: ignore[arg-type]
            maintain(conn)
            refresh_range(conn, ["air_sensor"], older, older + timedelta(minutes=1))
            old_hour = reader.buckets(hour, older, older + timedelta(hours=1), timedelta(hours=1))
            assert [(b.count, b.max) for b in old_hour] == [(1, 7.0)]
            materialized = _materialized_count(conn, older)
            assert materialized == 1


def _materialization(conn: Conn, view: str) -> str:
    ((schema, name),) = fetch(
        conn,
        "SELECT materialization_hypertable_schema, materialization_hypertable_name"
        " FROM timescaledb_information.continuous_aggregates"
        " WHERE view_schema = current_schema() AND view_name = %s",
        view,
    )
    return f"{schema}.{name}"


def _materialized_count(conn: Conn, hour: Any) -> int:
    """Rows stored (not computed at read time) for the hour of `hour` in agg_1h_air_sensor."""
    backend = fetch(conn, "SELECT value FROM store_settings WHERE key = 'backend'")[0][0]
    table = (
        "rollup_1h_air_sensor"
        if backend == "plain"
        else _materialization(conn, "agg_1h_air_sensor")
    )
    rows = fetch(
        conn,
        f"SELECT count(*) FROM {table} WHERE bucket = date_trunc('hour', %s::timestamptz)",
        hour,
    )
    return int(rows[0][0])


def test_a_backfill_of_an_old_month_refreshes_its_aggregates(
    ts: Conn, tsdb: TimescaleStore
) -> None:
    prefix = "bulk-"
    register(ts, city(prefix))
    old = (NOW - timedelta(days=40)).replace(hour=2)
    # Validated as ingest validates (one message out of range), then stored without COPY.
    messages = [
        (
            f"devices/{prefix}meter-w/telemetry",
            f'{{"ts": "{(old + timedelta(minutes=15 * k)).isoformat()}",'
            f' "metrics": {{"index": {k}, "flow": {-1 if k == 5 else 0.5}}}}}'.encode(),
            f"test:{k}",
        )
        for k in range(8)
    ]
    report = backfill(tsdb.url, messages, insert_mode=tsdb.mode)
    assert (report.stored, dict(report.rejected)) == (7, {"schema_violation": 1})
    hourly = fetch(
        ts,
        f"SELECT bucket, index_count FROM {_materialization(ts, 'agg_1h_meter')} ORDER BY 1",
    )
    assert hourly == [(old, 4), (old + timedelta(hours=1), 3)]  # materialized, not real-time


def test_a_backfill_whose_readings_all_fall_on_one_hour_boundary_refreshes_that_hour(
    ts: Conn, tsdb: TimescaleStore
) -> None:
    prefix = "edge-"
    register(ts, city(prefix))
    at = NOW - timedelta(days=30)  # a whole hour, older than the policies' window
    messages = [
        (
            f"devices/{prefix}meter-w/telemetry",
            f'{{"ts": "{at.isoformat()}", "metrics": {{"index": 3, "flow": 0.5}}}}'.encode(),
            "test:1",
        )
    ]
    report = backfill(tsdb.url, messages, insert_mode=tsdb.mode)
    assert report.stored == 1
    hourly = fetch(ts, f"SELECT bucket, index_count FROM {_materialization(ts, 'agg_1h_meter')}")
    assert hourly == [(at, 1)]


def test_a_job_the_scheduler_failed_is_reported_by_maintain(
    ts: Conn, pglite: LocalTimescale | None
) -> None:
    if pglite is not None:
        pytest.skip("PGlite runs no background jobs; a server with TimescaleDB's scheduler does")
    ts.execute(
        "CREATE PROCEDURE broken_job(job_id int, config jsonb) LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'broken on purpose'; END $$"
    )
    row = ts.execute("SELECT add_job('broken_job', '1 hour', initial_start => now())").fetchone()
    assert row is not None
    job_id = int(row[0])
    # A database copied from a template has no scheduler until one is started for it.
    ts.execute("SELECT _timescaledb_functions.start_background_workers()")
    deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
    while not [j for j in failed_jobs(ts) if j.job_id == job_id]:
        assert time.monotonic() < deadline, "the scheduler did not run the job"
        time.sleep(0.1)
    report = maintain(ts, retention=False, compression=False)
    (failed,) = [j for j in report.failed_jobs if j.job_id == job_id]
    assert (failed.job, failed.failures) == ("broken_job", 1)
    assert failed.error is not None and "broken on purpose" in failed.error


def test_sound_levels_average_as_energy_on_both_backends(
    ts: Conn, tsdb: TimescaleStore, plain_db_url: str
) -> None:
    prefix = "noise-"
    dev = f"{prefix}n1"
    at = START + timedelta(minutes=10)
    # LAeq 60 and 80 dB in one minute, 70 dB the next: the energy mean of the minute is
    # 10·log10((10^6 + 10^8) / 2) = 77.03 dB (the arithmetic mean would say 70).
    rows = [
        (at, dev, "environment", 60.0, 61.0),
        (at + timedelta(seconds=30), dev, "environment", 80.0, 81.0),
        (at + timedelta(minutes=1), dev, "environment", 70.0, 71.0),
    ]
    minute = 10 * math.log10((1e6 + 1e8) / 2)
    hour = 10 * math.log10((1e6 + 1e8 + 1e7) / 3)
    level_sql = (
        "SELECT avg, count, sum FROM (SELECT bucket, laeq_avg AS avg, laeq_count AS count,"
        " laeq_sum AS sum FROM {} WHERE device_id = %s) a ORDER BY bucket"
    )
    with psycopg.connect(plain_db_url, autocommit=True) as plain:
        for conn in (plain, ts):
            register(conn, [(dev, "noise_sensor", "environment", "north")])
        write(plain_db_url, {"noise_sensor": rows})
        write(tsdb.url, {"noise_sensor": rows}, mode=tsdb.mode)
        for refresh in (False, True):  # real-time from raw rows, then materialized
            if refresh:
                maintain(plain)
                maintain(ts)
            for conn in (plain, ts):
                minutes = fetch(conn, level_sql.format("agg_1m_noise_sensor"), dev)
                assert [(a, c) for a, c, _ in minutes] == [
                    (pytest.approx(minute), 2),
                    (pytest.approx(70.0), 1),
                ]
                assert [s for _, _, s in minutes] == [pytest.approx(1.01e8), pytest.approx(1e7)]
                ((avg, count, total),) = fetch(conn, level_sql.format("agg_1h_noise_sensor"), dev)
                assert (avg, count, total) == (pytest.approx(hour), 3, pytest.approx(1.11e8))
                # The read interface: raw rows (30 s), the 1-minute and the 1-hour level.
                reader = StoreReader(conn)
                sel = Selection("noise_sensor", ("laeq",), device_ids=(dev,))
                hour_start = at.replace(minute=0)
                for step, want in (
                    (timedelta(seconds=30), [60.0, 80.0, 70.0]),
                    (timedelta(minutes=1), [minute, 70.0]),
                    (timedelta(hours=1), [hour]),
                ):
                    got = reader.buckets(sel, hour_start, hour_start + timedelta(hours=1), step)
                    assert [b.avg for b in got] == [pytest.approx(w) for w in want], step
