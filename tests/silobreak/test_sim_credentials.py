"""The simulated fleet's secrets: registered through the identity path, kept in the simulator's
file, reused while they work, and the broker waited for until it accepts them."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from devices.credentials import broker_hash, broker_hash_matches
from devices.registry import DeviceRecord, new_record
from firmware_sim import BrokerError
from silobreak.local import LocalMosquitto
from silobreak.sim_credentials import (
    SimSecretsError,
    provision,
    read_secrets,
    wait_for_broker,
    write_secrets,
)
from store.lifecycle import decommission, rotate_secret

ACTOR = "test"


def fleet(prefix: str) -> list[DeviceRecord]:
    return [new_record(f"{prefix}lamp-{i}", "streetlight") for i in range(4)]


def stored_hashes(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    rows = conn.execute(
        "SELECT device_id, broker_hash FROM device_credentials WHERE revoked_at IS NULL"
    ).fetchall()
    return {str(d): str(h) for d, h in rows}


@pytest.mark.integration
def test_the_first_run_issues_every_secret_and_the_next_keeps_them(
    db_url: str, tmp_path: Path, device_prefix: str
) -> None:
    records, path = fleet(device_prefix), tmp_path / "state" / "secrets.csv"
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = provision(conn, records, secrets_file=path, actor=ACTOR)
        again = provision(conn, records, secrets_file=path, actor=ACTOR)
        stored = stored_hashes(conn)
    assert (first.new_devices, first.activated, len(first.changed), first.replaced) == (4, 4, 4, 0)
    assert read_secrets(path) == first.passwords
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert all(broker_hash_matches(s, stored[d]) for d, s in first.passwords.items())
    assert (again.new_devices, again.activated, again.changed, again.replaced) == (0, 0, (), 0)
    assert again.passwords == first.passwords


@pytest.mark.integration
def test_only_secrets_the_simulator_does_not_hold_are_replaced(
    db_url: str, tmp_path: Path, device_prefix: str
) -> None:
    records, path = fleet(device_prefix), tmp_path / "secrets.csv"
    lost, rotated, retired, kept = (r.device_id for r in records)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = provision(conn, records, secrets_file=path, actor=ACTOR)
        write_secrets(path, {d: s for d, s in first.passwords.items() if d != lost})
        rotate_secret(conn, rotated, actor=ACTOR)  # someone else gave it a new secret
        decommission(conn, [retired], actor=ACTOR)
        again = provision(conn, records, secrets_file=path, actor=ACTOR)
        stored = stored_hashes(conn)
    assert set(again.changed) == {lost, rotated}
    # The decommissioned one stays so, without a secret, and out of the file.
    assert (again.replaced, again.activated, again.decommissioned) == (2, 0, (retired,))
    assert retired not in again.passwords and retired not in stored
    assert again.passwords[kept] == first.passwords[kept]
    assert all(broker_hash_matches(again.passwords[d], stored[d]) for d in (lost, rotated, kept))
    assert read_secrets(path) == again.passwords


def test_a_broken_secrets_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "secrets.csv"
    path.write_text("device_id,secret\nlamp-1,abc\nlamp-2\n", encoding="utf-8")
    with pytest.raises(SimSecretsError, match="line 3"):
        read_secrets(path)
    assert read_secrets(tmp_path / "none.csv") == {}


@pytest.mark.integration
def test_waiting_for_the_broker_ends_when_it_accepts_and_names_the_device_when_it_never_does(
    service_dir: Path,
) -> None:
    passwords = service_dir / "passwd"
    passwords.write_text(f"lamp-1:{broker_hash('right')}\n", encoding="utf-8")
    config = f"allow_anonymous false\npassword_file {passwords}\n"
    with LocalMosquitto(service_dir / "mqtt", extra_config=config, persistence=False) as broker:
        assert wait_for_broker(broker.url, "lamp-1", "right", timeout=10) < 10
        with pytest.raises(BrokerError, match="still refuses lamp-1"):
            wait_for_broker(broker.url, "lamp-1", "wrong", timeout=0.5)
