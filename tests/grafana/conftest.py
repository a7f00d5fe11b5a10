"""A store holding a simulated day of the default city, shared by the dashboard tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from silobreak.local import LocalPostgres
from store.maintain import release_pooled
from store.organisations import add_organisation
from store.principals import add_principal
from store.sql_roles import ensure_roles
from tests.grafana.city_day import Day, grant, load_day
from tests.store.store_helpers import refresh_aggregates

ACTOR = "test"

# What the cross-service board needs from other services: mobility and lighting grant the
# environment service (its default datasource) their raw readings, as a study would ask.
STUDY_GRANTS = (("mobility", "traffic_light"), ("lighting", "streetlight"))
# The platform board's data-flows panel reads as the city's coordinator; the region board as a
# regional syndicate's team holding hourly pooled meter contracts from the city's energy
# service and from the water utility, an organisation of its own.
COORDINATOR = "data-office"
REGION_TEAM = "region-energy"
REGION_OWNERS = ("energy", "water")


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
            study = [grant(conn, owner, "environment", [t]) for owner, t in STUDY_GRANTS]
            regional = _region(conn)
            _reads(conn, day, [*study, *regional])
            ensure_roles(conn)
            # As `silobreak maintain` would have by the end of a day, then statistics as
            # autovacuum would have gathered them.
            refresh_aggregates(conn)
            release_pooled(conn, now=day.end)
            conn.execute("ANALYZE")
        yield url, day
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _region(conn: psycopg.Connection[Any]) -> list[int]:
    """The water utility as an organisation of its own, the city's coordinator, and a
    syndicate's team with a signed hourly pooled contract from each of the two owners."""
    add_organisation(conn, "eaux", "utility", actor=ACTOR)
    conn.execute("UPDATE services SET organisation = 'eaux' WHERE name = 'water'")
    add_organisation(conn, "region", "syndicate", actor=ACTOR)
    add_principal(conn, COORDINATOR, "coordinator", organisation="city", actor=ACTOR)
    add_principal(conn, REGION_TEAM, "team", organisation="region", actor=ACTOR)
    return [
        grant(conn, owner, REGION_TEAM, ["meter"], granularity="aggregate", interval_s=3600,
              pool="district")
        for owner in REGION_OWNERS
    ]  # fmt: skip


def _reads(conn: psycopg.Connection[Any], day: Day, grant_ids: list[int]) -> None:
    """History reads on record through the day, as the API writes them (data flows)."""
    for hour in range(0, 24, 3):
        conn.execute(
            "INSERT INTO audit_log (at, actor, action, owner, consumer, grant_id, readings)"
            " SELECT %s, g.consumer, 'history.read', g.owner, g.consumer, g.id, 100"
            " FROM grants g WHERE g.id = ANY(%s)",
            (day.start + timedelta(hours=hour, minutes=30), grant_ids),
        )
