"""The TimescaleDB test server (PGlite + TimescaleDB 2.23 over the wire) runs the store's SQL.

One server per module (~2 s to start); each test works in a schema of its own, dropped after
it (with its hypertables, aggregates and jobs). See docs/timescale-testing.md.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from tests.support.timescale import LocalTimescale

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[TupleRow]
# A whole hour, 3 days back: buckets line up with START, and daily chunks are old enough to
# compress and to drop.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
START = NOW - timedelta(days=3)

INSERT = """
INSERT INTO readings_air_sensor (time, device_id, service, pm25, pm10)
SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::float8[], %s::float8[])
ON CONFLICT DO NOTHING
"""


@pytest.fixture(scope="module")
def timescale() -> Iterator[LocalTimescale]:
    with LocalTimescale() as server:
        version = server.create_extension()
        assert version.startswith("2.23"), version
        yield server


@pytest.fixture
def conn(timescale: LocalTimescale) -> Iterator[Conn]:
    """An autocommit connection whose search_path is a fresh schema of this test's own.

    The server has one session for all connections, so search_path is shared: tests on one
    server must not run concurrently.
    """
    schema = sql.Identifier(f"t_{uuid.uuid4().hex[:10]}")
    with timescale.connect() as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        c.execute(sql.SQL("SET search_path TO {}, public").format(schema))
        try:
            yield c
        finally:
            c.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
            c.execute("RESET search_path")


def create_readings(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE readings_air_sensor (time timestamptz NOT NULL, device_id text NOT NULL,"
        " service text NOT NULL, pm25 double precision, pm10 double precision,"
        " PRIMARY KEY (device_id, time))"
    )
    conn.execute(
        "SELECT create_hypertable('readings_air_sensor', by_range('time', INTERVAL '1 day'),"
        " create_default_indexes => false)"
    )


def insert_minutes(conn: Conn, device_id: str, minutes: int, pm25: float) -> int:
    """One row a minute from START, pm25 rising by 1 from `pm25`; returns rows inserted."""
    times = [START + timedelta(minutes=i) for i in range(minutes)]
    cur = conn.execute(
        INSERT,
        (
            times,
            [device_id] * minutes,
            ["environment"] * minutes,
            [pm25 + i for i in range(minutes)],
            [None] * minutes,
        ),
    )
    return cur.rowcount


def job_id(conn: Conn, proc_name: str, table: str) -> int:
    row = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_name = %s AND hypertable_schema = current_schema()",
        (proc_name, table),
    ).fetchone()
    assert row is not None, f"no {proc_name} job on {table}"
    return int(row[0])


def test_continuous_aggregate_refreshed_by_its_policy_job(conn: Conn) -> None:
    create_readings(conn)
    assert insert_minutes(conn, "air-1", 120, pm25=10.0) == 120
    assert insert_minutes(conn, "air-1", 120, pm25=99.0) == 0  # redelivery writes nothing
    # materialized_only: what the view returns is what the job materialized.
    conn.execute(
        "CREATE MATERIALIZED VIEW air_1h WITH (timescaledb.continuous,"
        " timescaledb.materialized_only = true) AS"
        " SELECT time_bucket('1 hour', time) AS bucket, device_id, avg(pm25) AS avg,"
        " min(pm25) AS min, max(pm25) AS max, count(pm25) AS count, last(pm25, time) AS last"
        " FROM readings_air_sensor GROUP BY bucket, device_id WITH NO DATA"
    )
    # buckets_per_batch => 0: one refresh, not one batch per bucket (~3 ms each here).
    conn.execute(
        "SELECT add_continuous_aggregate_policy('air_1h', start_offset => INTERVAL '7 days',"
        " end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '1 hour',"
        " buckets_per_batch => 0)"
    )
    assert conn.execute("SELECT count(*) FROM air_1h").fetchone() == (0,)

    refresh = job_id(conn, "policy_refresh_continuous_aggregate", "air_1h")
    conn.execute("CALL run_job(%s)", (refresh,))

    rows = conn.execute(
        "SELECT bucket, device_id, avg, min, max, count, last FROM air_1h ORDER BY bucket"
    ).fetchall()
    assert rows == [
        (START, "air-1", 39.5, 10.0, 69.0, 60, 69.0),
        (START + timedelta(hours=1), "air-1", 99.5, 70.0, 129.0, 60, 129.0),
    ]

    # A late reading for an already materialized hour shows after an explicit refresh.
    late = START + timedelta(seconds=30)
    conn.execute(INSERT, ([late], ["air-2"], ["environment"], [5.0], [None]))
    late_row = "SELECT avg, count FROM air_1h WHERE device_id = 'air-2'"
    assert conn.execute(late_row).fetchall() == []
    conn.execute(
        "CALL refresh_continuous_aggregate('air_1h', %s::timestamptz, %s::timestamptz)",
        (START, START + timedelta(hours=1)),
    )
    assert conn.execute(late_row).fetchall() == [(5.0, 1)]


def test_compression_and_retention_jobs_act_on_chunks(conn: Conn) -> None:
    create_readings(conn)
    insert_minutes(conn, "air-1", 3 * 24 * 60, pm25=0.0)  # 3 days: 4 daily chunks
    conn.execute(
        "ALTER TABLE readings_air_sensor SET (timescaledb.compress,"
        " timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'time')"
    )
    conn.execute("SELECT add_compression_policy('readings_air_sensor', INTERVAL '1 day')")
    conn.execute("SELECT add_retention_policy('readings_air_sensor', INTERVAL '2 days')")
    chunks = (
        "SELECT count(*) FILTER (WHERE is_compressed), count(*) FROM timescaledb_information.chunks"
        " WHERE hypertable_schema = current_schema() AND hypertable_name = 'readings_air_sensor'"
    )
    compressed_before, total_before = conn.execute(chunks).fetchone() or (0, 0)
    assert compressed_before == 0

    conn.execute("CALL run_job(%s)", (job_id(conn, "policy_compression", "readings_air_sensor"),))
    compressed, total = conn.execute(chunks).fetchone() or (0, 0)
    assert total == total_before
    assert compressed >= 2
    # Compressed chunks still answer queries and take late, idempotent inserts.
    assert insert_minutes(conn, "air-1", 10, pm25=0.0) == 0
    assert conn.execute("SELECT count(*) FROM readings_air_sensor").fetchone() == (3 * 24 * 60,)

    conn.execute("CALL run_job(%s)", (job_id(conn, "policy_retention", "readings_air_sensor"),))
    _, total_after = conn.execute(chunks).fetchone() or (0, 0)
    assert total_after < total
    oldest = conn.execute("SELECT min(time) FROM readings_air_sensor").fetchone()
    assert oldest is not None
    assert oldest[0] > START  # whole chunks older than 2 days are gone


def test_server_survives_copy_and_a_client_killed_mid_transaction(
    timescale: LocalTimescale, conn: Conn
) -> None:
    conn.execute("CREATE TABLE t (i int PRIMARY KEY)")
    schema = conn.execute("SELECT current_schema()").fetchone()
    assert schema is not None
    # COPY FROM STDIN would abort the WASM backend; the server answers it with an error.
    with (
        pytest.raises(psycopg.errors.FeatureNotSupported),
        conn.cursor().copy("COPY t FROM STDIN") as copy,
    ):
        copy.write_row((1,))
    # A client dies holding a transaction open: the server rolls it back and goes on.
    code = (
        "import sys, psycopg\n"
        f"c = psycopg.connect({timescale.url!r}, prepare_threshold=None)\n"
        f"c.execute('INSERT INTO {schema[0]}.t VALUES (1)')\n"
        "print('in transaction', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "in transaction"
    finally:
        child.kill()
        child.communicate()
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    conn.execute("INSERT INTO t VALUES (2)")
    assert conn.execute("SELECT i FROM t").fetchall() == [(2,)]
