"""Governed SQL: a service's database role sees its own readings and what its grants allow.

Each test logs in over TCP as the role a Grafana datasource uses (`grafana_lighting`) and
reads what a dashboard or an analyst's psql would.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from store.maintain import release_pooled
from store.sql_roles import PLATFORM_ROLE, ensure_roles, role_for, scram_verifier
from tests.grafana.city_day import grant
from tests.store.store_helpers import NOW, city, readings, refresh_aggregates, register, write

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
START = NOW - timedelta(hours=3)


@pytest.fixture
def store(db_url: str, device_prefix: str) -> Iterator[Conn]:
    """Three hours of a small city (air sensors north and south, lamps, meters); roles made."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
        conn.execute("UPDATE device_ownership SET valid_from = %s", (START - timedelta(days=1),))
        write(db_url, readings(device_prefix, START, 180))
        refresh_aggregates(conn)
        ensure_roles(conn)
        yield conn


@pytest.fixture
def lighting(db_url: str, store: Conn) -> Iterator[Conn]:
    del store
    url = db_url.replace("postgresql://postgres@", "postgresql://grafana_lighting@", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def count(conn: Conn, query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def test_a_service_role_reads_its_own_readings_and_not_the_tables_behind_them(
    lighting: Conn, store: Conn
) -> None:
    assert lighting.execute("SHOW search_path").fetchone() == ("governed, public",)
    own = count(store, "SELECT count(*) FROM readings_streetlight")
    assert own > 0
    assert count(lighting, "SELECT count(*) FROM readings_streetlight") == own
    assert count(lighting, "SELECT count(*) FROM readings_air_sensor") == 0
    assert count(lighting, "SELECT count(*) FROM agg_1h_air_sensor") == 0
    assert count(lighting, "SELECT count(*) FROM devices WHERE device_type = 'air_sensor'") == 0
    assert {r[0] for r in lighting.execute("SELECT DISTINCT service FROM readings")} == {"lighting"}
    for table in ("public.readings_air_sensor", "public.devices", "public.grants"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            lighting.execute(f"SELECT 1 FROM {table} LIMIT 1")


def test_a_raw_grant_shows_only_its_metrics_and_districts_until_it_is_revoked(
    lighting: Conn, store: Conn, device_prefix: str
) -> None:
    gid = grant(store, "environment", "lighting", ["air_sensor"], metrics=["no2"],
                districts=["north"])  # fmt: skip
    rows = lighting.execute(
        "SELECT device_id, time, pm25, pm10, no2, o3, temperature_c, humidity_pct"
        " FROM readings_air_sensor ORDER BY 1, 2"
    ).fetchall()
    expected = store.execute(
        "SELECT device_id, time, no2 FROM readings_air_sensor"
        " WHERE no2 IS NOT NULL AND device_id = ANY(%s) ORDER BY 1, 2",
        ([f"{device_prefix}air-1", f"{device_prefix}air-2"],),
    ).fetchall()
    assert expected
    assert [(r[0], r[1], r[4]) for r in rows] == expected  # north only, rows with NO2 only
    assert all(r[2] is None and r[3] is None and r[5] is None and r[6] is None for r in rows)
    visible = {r[0] for r in lighting.execute(
        "SELECT device_id FROM devices WHERE device_type = 'air_sensor'")}  # fmt: skip
    assert visible == {f"{device_prefix}air-1", f"{device_prefix}air-2"}

    store.execute("UPDATE grants SET status = 'revoked' WHERE id = %s", (gid,))
    assert count(lighting, "SELECT count(*) FROM readings_air_sensor") == 0
    assert count(lighting, "SELECT count(*) FROM devices WHERE device_type = 'air_sensor'") == 0


def test_an_expired_grant_shows_nothing_even_before_a_gateway_marks_it(
    lighting: Conn, store: Conn
) -> None:
    gid = grant(store, "environment", "lighting", ["air_sensor"])
    assert count(lighting, "SELECT count(*) FROM readings_air_sensor") > 0
    store.execute(
        "UPDATE grants SET expires_at = %s WHERE id = %s",
        (datetime.now(UTC) - timedelta(seconds=1), gid),
    )
    assert count(lighting, "SELECT count(*) FROM readings_air_sensor") == 0
    assert count(lighting, "SELECT count(*) FROM agg_1m_air_sensor") == 0


def test_an_aggregate_only_grant_yields_no_raw_rows_and_only_levels_as_coarse_as_it(
    lighting: Conn, store: Conn
) -> None:
    grant(store, "environment", "lighting", ["air_sensor"], metrics=["pm25"],
          granularity="aggregate", interval_s=900, pool="device")  # fmt: skip
    assert count(lighting, "SELECT count(*) FROM readings_air_sensor") == 0
    assert count(lighting, "SELECT count(*) FROM readings WHERE device_type = 'air_sensor'") == 0
    # 1-minute buckets are finer than the granted 15 minutes: none.
    assert count(lighting, "SELECT count(*) FROM agg_1m_air_sensor") == 0
    hourly = lighting.execute(
        "SELECT device_id, bucket, pm25_avg, pm25_count, no2_avg, no2_count"
        " FROM agg_1h_air_sensor ORDER BY 1, 2"
    ).fetchall()
    truth = store.execute(
        "SELECT device_id, bucket, pm25_avg, pm25_count FROM agg_1h_air_sensor"
        " WHERE pm25_count > 0 ORDER BY 1, 2"
    ).fetchall()
    assert truth
    assert [r[:4] for r in hourly] == truth
    assert all(r[4] is None and r[5] is None for r in hourly)  # NO2 was not granted


def test_personal_data_stays_out_of_raw_grants_and_pools_below_the_minimum_are_dropped(
    lighting: Conn, store: Conn
) -> None:
    grant(store, "energy", "lighting", ["meter"])
    assert count(lighting, "SELECT count(*) FROM readings_meter") == 0
    grant(store, "energy", "lighting", ["meter"], granularity="aggregate", interval_s=3600,
          pool="district")  # fmt: skip
    assert release_pooled(store) > 0  # the upkeep releases sealed hourly pools
    # One energy meter in the district: below the pool minimum of 5.
    assert count(lighting, "SELECT count(*) FROM pooled_1h WHERE device_type = 'meter'") == 0
    store.execute("UPDATE store_settings SET value = '1' WHERE key = 'streams_min_pool'")
    cur = lighting.execute(
        "SELECT district, service, devices, metric FROM pooled_1h WHERE device_type = 'meter'"
    )
    pooled = cur.fetchall()
    assert pooled
    assert {(d, s, n) for d, s, n, _ in pooled} == {("north", "energy", 1)}
    # A pool shows no one's own reading: the governed view has no min, max or last.
    columns = {c.name for c in cur.description or []}
    assert not columns & {"min", "max", "last"}
    all_columns = lighting.execute("SELECT * FROM pooled_1h LIMIT 0").description or []
    assert {c.name for c in all_columns} == {
        "bucket",
        "device_type",
        "service",
        "district",
        "metric",
        "sum",
        "avg",
        "count",
        "devices",
    }
    assert count(lighting, "SELECT count(*) FROM agg_1h_meter") == 0  # no per-device rows
    assert count(lighting, "SELECT count(*) FROM pooled_1h WHERE device_type = 'air_sensor'") == 0


def test_roles_are_idempotent_and_a_disabled_principal_loses_its_login(
    db_url: str, store: Conn, device_prefix: str
) -> None:
    # Roles belong to the whole server: a name of this test's own, so no other test's
    # `grafana roles` has made it already.
    team = f"team-{device_prefix.strip('-')}"
    role = role_for(team)
    store.execute("INSERT INTO principals (name, kind) VALUES (%s, 'team')", (team,))
    roles = {c.role: c for c in ensure_roles(store, passwords={role: "s3cret"})}
    assert roles[role].created and roles[role].password_set
    assert not roles["grafana_lighting"].created
    assert PLATFORM_ROLE in roles
    stored = store.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    verifier = stored.fetchone()
    assert verifier is not None
    # Stored as sent (a verifier PostgreSQL accepted), not hashed again as if plain text.
    salt = base64.b64decode(str(verifier[0]).split("$")[1].split(":")[1])
    assert verifier[0] == scram_verifier("s3cret", salt=salt)
    store.execute("UPDATE principals SET disabled_at = now() WHERE name = %s", (team,))
    ensure_roles(store)
    row = store.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,))
    assert row.fetchone() == (False,)
    left = store.execute("SELECT count(*) FROM sql_viewers WHERE principal = %s", (team,))
    assert left.fetchone() == (0,)
    platform = db_url.replace("postgresql://postgres@", f"postgresql://{PLATFORM_ROLE}@", 1)
    with psycopg.connect(platform) as conn:
        assert count(conn, "SELECT count(*) FROM platform_stats") == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT 1 FROM readings_streetlight")


def test_role_names_past_postgresql_limit_are_refused_and_verifiers_are_scram() -> None:
    with pytest.raises(Exception, match="longer than"):
        role_for("x" * 60)
    verifier = scram_verifier("pw", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
