"""Device lifecycle in the registry, against a real PostgreSQL database of each test's own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from devices.registry import new_record
from store import audit
from store.lifecycle import (
    LifecycleError,
    decommission,
    erase_readings,
    load_broker_auth,
    register_devices,
    revoke_secrets,
    transfer,
)
from store.principals import add_principal, disable_principal
from tests.store.store_helpers import ensure_partitions

pytestmark = pytest.mark.integration

ACTOR = "test"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def store_readings(conn: psycopg.Connection[Any], device_id: str, times: list[datetime]) -> None:
    ensure_partitions(conn, "readings_air_sensor", min(times).date(), max(times).date())
    conn.execute(
        "INSERT INTO readings_air_sensor (time, device_id, service, pm25)"
        " SELECT t, %s, 'environment', 1 FROM unnest(%s::timestamptz[]) AS t",
        (device_id, times),
    )


def version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT version FROM registry_version").fetchone()
    assert row is not None
    return int(row[0])


def test_registering_again_keeps_a_live_secret_and_renews_a_revoked_one(
    conn: psycopg.Connection[Any],
) -> None:
    first = register_devices(conn, [new_record("a", "meter")], actor=ACTOR)
    assert (first.new, set(first.secrets)) == (1, {"a"})
    again = register_devices(conn, [new_record("a", "meter")], actor=ACTOR)
    assert (again.new, again.updated, again.secrets) == (0, 1, {})
    revoke_secrets(conn, ["a"], actor=ACTOR)
    assert set(register_devices(conn, [new_record("a", "meter")], actor=ACTOR).secrets) == {"a"}


def test_nothing_is_registered_when_the_secrets_cannot_be_delivered(
    conn: psycopg.Connection[Any],
) -> None:
    def fail(_secrets: dict[str, str]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        register_devices(conn, [new_record("a", "meter")], actor=ACTOR, deliver=fail)
    assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


def test_the_broker_accounts_leave_out_revoked_retired_and_disabled_ones(
    conn: psycopg.Connection[Any],
) -> None:
    register_devices(
        conn, [new_record(d, "streetlight") for d in ("live", "revoked", "retired")], actor=ACTOR
    )
    revoke_secrets(conn, ["revoked"], actor=ACTOR)
    decommission(conn, ["retired"], actor=ACTOR)
    add_principal(conn, "lighting", "service", actor=ACTOR)
    add_principal(conn, "gone", "team", actor=ACTOR)
    disable_principal(conn, "gone", actor=ACTOR)
    auth = load_broker_auth(conn)
    assert [d for d, _ in auth.devices] == ["live"]
    # A revoked device is still lighting's (it may get a new secret); a retired one is not.
    assert [(p.username, list(p.owned_devices)) for p in auth.principals] == [
        ("service~lighting", ["live", "revoked"])
    ]


def test_decommissioning_an_unknown_device_changes_nothing(conn: psycopg.Connection[Any]) -> None:
    register_devices(conn, [new_record("a", "meter")], actor=ACTOR)
    with pytest.raises(LifecycleError, match="not in the registry: ghost"):
        decommission(conn, ["a", "ghost"], actor=ACTOR)
    assert conn.execute("SELECT lifecycle FROM devices").fetchone() == ("active",)


def test_presence_updates_do_not_bump_the_registry_version(conn: psycopg.Connection[Any]) -> None:
    register_devices(conn, [new_record("a", "meter")], actor=ACTOR)
    before = version(conn)
    conn.execute("UPDATE devices SET connection = 'online', last_seen = now(), status_at = now()")
    assert version(conn) == before
    decommission(conn, ["a"], actor=ACTOR)
    assert version(conn) > before


def test_a_transfer_retags_later_readings_and_keeps_the_history_growing(
    conn: psycopg.Connection[Any],
) -> None:
    register_devices(conn, [new_record("air", "air_sensor")], actor=ACTOR)
    store_readings(conn, "air", [NOW - timedelta(minutes=m) for m in range(10)])
    done = transfer(conn, "air", "mobility", NOW - timedelta(minutes=4, seconds=30), actor=ACTOR)
    assert (done.old_service, done.retagged) == ("environment", 5)
    owners = conn.execute(
        "SELECT service, count(*) FROM readings_air_sensor GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert owners == [("environment", 5), ("mobility", 5)]
    with pytest.raises(LifecycleError, match="must come after"):
        transfer(conn, "air", "energy", NOW - timedelta(minutes=5), actor=ACTOR)
    with pytest.raises(LifecycleError, match="future"):
        transfer(conn, "air", "energy", NOW + timedelta(hours=1), actor=ACTOR)
    with pytest.raises(LifecycleError, match="already belongs"):
        transfer(conn, "air", "mobility", actor=ACTOR)
    assert [e.action for e in audit.entries(conn, subject="air")] == [
        "device.transfer",
        "device.register",
    ]


def test_erasure_deletes_readings_and_dead_letters_in_range_and_is_audited(
    conn: psycopg.Connection[Any],
) -> None:
    register_devices(conn, [new_record("air", "air_sensor")], actor=ACTOR)
    store_readings(conn, "air", [NOW - timedelta(hours=h) for h in range(6)])
    conn.execute(
        "INSERT INTO rejected_messages (received_at, topic, device_id, reason, payload)"
        " VALUES (%s, 'devices/air/telemetry', 'air', 'schema_violation', '\\x00')",
        (NOW - timedelta(hours=1),),
    )
    with pytest.raises(LifecycleError, match="reason"):
        erase_readings(conn, "air", reason=" ", actor=ACTOR)
    erased = erase_readings(
        conn, "air", reason="request 42", actor=ACTOR, since=NOW - timedelta(hours=2, minutes=30)
    )
    assert erased == (3, 1)
    assert conn.execute("SELECT count(*) FROM readings_air_sensor").fetchone() == (3,)
    entry = audit.entries(conn, subject="air")[0]
    assert (entry.action, entry.detail["reason"], entry.detail["readings"]) == (
        "device.erase",
        "request 42",
        3,
    )
