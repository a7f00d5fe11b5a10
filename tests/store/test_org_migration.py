"""A single-city database from before organisations migrates into one, nothing lost or renamed.

The database is built as the release before organisations left it (migrations up to 0052),
populated through SQL as that release wrote it, then migrated. Every row is still there under
the same names, and every grant, token and subscription still works through the API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from silobreak.local import LocalMosquitto
from store.migrate import migrate
from streams import cursor
from tests.streams.conftest import serving, write_rows

pytestmark = pytest.mark.integration

BEFORE_ORGANISATIONS = 52
TOKENS = {"planning": "sbk_" + "p" * 43, "lighting": "sbk_" + "l" * 43,
          "data-office": "sbk_" + "d" * 43}  # fmt: skip
TABLES = ("principals", "api_tokens", "devices", "device_ownership", "device_credentials",
          "grants", "subscriptions", "audit_log", "admin_audit",
          "readings_streetlight")  # fmt: skip


def populate(conn: psycopg.Connection[Any], p: str) -> dict[str, int]:
    """A city as the release before organisations stored it; the grant ids by name."""
    conn.execute(
        "INSERT INTO principals (name, kind) VALUES ('lighting', 'service'),"
        " ('mobility', 'service'), ('planning', 'team'), ('data-office', 'coordinator'),"
        " ('ingest', 'component')"
    )
    expires = datetime.now(UTC) + timedelta(days=10)
    for name, token in TOKENS.items():
        conn.execute(
            "INSERT INTO api_tokens (token_id, principal, token_hash, expires_at)"
            " VALUES (%s, %s, %s, %s)",
            (f"tok_{name}", name, hashlib.sha256(token.encode()).hexdigest(), expires),
        )
    for device, district in ((f"{p}lamp-1", "north"), (f"{p}lamp-2", "south")):
        conn.execute(
            "INSERT INTO devices (device_id, device_type, service, district)"
            " VALUES (%s, 'streetlight', 'lighting', %s)",
            (device, district),
        )
        conn.execute(
            "INSERT INTO device_ownership VALUES (%s, '1970-01-01Z', 'lighting')", (device,)
        )
        conn.execute(
            "INSERT INTO device_credentials (device_id, broker_hash) VALUES (%s, '$7$x')",
            (device,),
        )
    # A device of a service that never had a principal: it joins the organisation too.
    conn.execute(
        "INSERT INTO devices (device_id, device_type, service) VALUES (%s, 'meter', 'water')",
        (f"{p}meter-1",),
    )
    ids: dict[str, int] = {}
    for name, status in (("live", "active"), ("asked", "requested"), ("old", "revoked")):
        row = conn.execute(
            "INSERT INTO grants (owner, consumer, device_types, metrics, granularity, purpose,"
            " expires_at, status, created_by) VALUES ('lighting', 'planning', '{streetlight}',"
            " '{power_w}', 'raw', %s, %s, %s, 'lighting') RETURNING id",
            (f"{name} study", expires, status),
        ).fetchone()
        assert row is not None
        ids[name] = int(row[0])
    snapshot = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
    assert snapshot is not None
    start = cursor.encode(cursor.Live(str(snapshot[0])))
    conn.execute(
        "INSERT INTO subscriptions (id, consumer, grant_id, device_types, metrics, delivery,"
        " cursor) VALUES ('s0123456789abcdef', 'planning', %s, '{streetlight}', '{power_w}',"
        " 'sse', %s)",
        (ids["live"], start),
    )
    conn.execute(
        "INSERT INTO audit_log (actor, action, owner, consumer, grant_id, readings)"
        " VALUES ('planning', 'history.read', 'lighting', 'planning', %s, 3)",
        (ids["live"],),
    )
    conn.execute(
        "INSERT INTO admin_audit (actor, action, subject) VALUES ('ops', 'principal.add', 'x')"
    )
    return ids


def counts(conn: psycopg.Connection[Any], tables: Sequence[str]) -> dict[str, int]:
    out = {}
    for table in tables:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        out[table] = int(row[0])
    return out


def test_a_populated_single_city_database_migrates_into_one_organisation(
    empty_db_url: str, device_prefix: str, mqtt_broker: LocalMosquitto
) -> None:
    p = device_prefix
    applied = migrate(empty_db_url, until=BEFORE_ORGANISATIONS)
    assert applied[-1].startswith(f"{BEFORE_ORGANISATIONS:04d}_")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        ids = populate(conn, p)
    now = datetime.now(UTC)
    write_rows(empty_db_url, "streetlight", [
        (now - timedelta(minutes=m), f"{p}lamp-{i}", "lighting", 1, 50.0, 10.0 * m + i)
        for m in range(1, 4) for i in (1, 2)
    ])  # fmt: skip
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        before = counts(conn, TABLES)
        grants_before = conn.execute(
            "SELECT id, owner, consumer, status, purpose FROM grants ORDER BY id"
        ).fetchall()

    assert any("organisations" in m for m in migrate(empty_db_url))

    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        assert counts(conn, TABLES) == before
        assert (
            conn.execute(
                "SELECT id, owner, consumer, status, purpose FROM grants ORDER BY id"
            ).fetchall()
            == grants_before
        )
        assert conn.execute("SELECT name, kind FROM organisations").fetchall() == [
            ("city", "municipality")
        ]
        assert conn.execute(
            "SELECT name, organisation FROM principals ORDER BY name"
        ).fetchall() == [("data-office", "city"), ("ingest", None), ("lighting", "city"),
                         ("mobility", "city"), ("planning", "city")]  # fmt: skip
        assert conn.execute("SELECT name FROM services ORDER BY name").fetchall() == [
            ("lighting",),
            ("mobility",),
            ("water",),
        ]
        assert conn.execute("SELECT DISTINCT owner_org, consumer_org FROM grants").fetchall() == [
            ("city", "city")
        ]
        assert conn.execute("SELECT consumer_org FROM subscriptions").fetchall() == [("city",)]
        assert conn.execute("SELECT owner_org, consumer_org FROM audit_log").fetchall() == [
            ("city", "city")
        ]

    with serving(empty_db_url, mqtt_broker) as (base, _app):

        def http(who: str) -> httpx.Client:
            return httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {TOKENS[who]}"}, timeout=30
            )

        with http("planning") as h:
            page = h.get(
                "/v1/history",
                params={"grant_id": ids["live"], "start": (now - timedelta(hours=1)).isoformat()},
            )
            assert page.status_code == 200, page.text
            assert sorted(r["value"] for r in page.json()["readings"]) == [
                11.0, 12.0, 21.0, 22.0, 31.0, 32.0,
            ]  # fmt: skip
            assert page.json()["terms"]["owner_org"] == "city"
            sub = h.get("/v1/subscriptions/s0123456789abcdef")
            assert (sub.status_code, sub.json()["grant_id"]) == (200, ids["live"])
        with http("lighting") as h:
            approved = h.post(f"/v1/grants/{ids['asked']}/approve", json={})
            assert (approved.status_code, approved.json()["status"]) == (200, "active")
            devices = h.get("/v1/devices").json()["devices"]
            assert sorted(d["device_id"] for d in devices) == [f"{p}lamp-1", f"{p}lamp-2"]
        with http("data-office") as h:
            seen = sorted(g["id"] for g in h.get("/v1/grants").json())
            assert seen == sorted(ids.values())
            entries = h.get("/v1/audit", params={"grant_id": ids["live"]}).json()["entries"]
            assert "history.read" in [e["action"] for e in entries]
