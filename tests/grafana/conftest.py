"""A store holding a simulated day of the default city, shared by the dashboard tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from silobreak.local import LocalPostgres
from store.sql_roles import ensure_roles
from tests.grafana.city_day import Day, grant, load_day
from tests.store.store_helpers import refresh_aggregates

# What the cross-service board needs from other services: mobility and lighting grant the
# environment service (its default datasource) their raw readings, as a study would ask.
STUDY_GRANTS = (("mobility", "traffic_light"), ("lighting", "streetlight"))


@pytest.fixture(scope="module")
def city_day(pg_server: LocalPostgres, template_db: str) -> Iterator[tuple[str, Day]]:
    """(database URL, the day loaded): readings, rejects, figures, roles, study grants."""
    name = f"t_city_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    url = pg_server.url_for(name)
    try:
        day = load_day(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for owner, device_type in STUDY_GRANTS:
                grant(conn, owner, "environment", [device_type])
            ensure_roles(conn)
            # As `silobreak maintain` would have by the end of a day, then statistics as
            # autovacuum would have gathered them.
            refresh_aggregates(conn)
            conn.execute("ANALYZE")
        yield url, day
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
