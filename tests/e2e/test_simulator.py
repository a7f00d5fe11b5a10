"""`silobreak simulate` through the whole pipeline: simulator → broker → ingest → PostgreSQL."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from devices.catalog import PHASE_CODES
from firmware_sim import (
    BrokerAddress,
    Fleet,
    build_fleet,
    load_scenario,
    messages,
    parse_broker_url,
)
from firmware_sim.link import connect_refusal
from silobreak.local import LocalMosquitto
from silobreak.sim_credentials import DEFAULT_SECRETS_FILE, provision, read_secrets
from store.lifecycle import decommission, transfer
from tests.e2e.harness import IngestProcess, message_count, query, wait_until
from tests.e2e.secure_broker import SecureCity, start_secure_city
from tests.firmware_sim.checks import decode
from tests.support.proxy import ThreadedProxy

pytestmark = pytest.mark.integration

StartIngestor = Callable[..., IngestProcess]
Row = tuple[str, str, datetime, float]

# Every device publishes every 5 s, so a minute holds 12 readings of each.
_INTERVAL_S = 5
_CITY = """
seed = 3
installed_between = [2023-01-01, 2024-01-01]
[city]
name = "Testville"
slug = "{slug}"
lat = 45.188
lon = 5.724
timezone = "Europe/Paris"
[intervals]
streetlight = {interval}
traffic_light = {interval}
air_sensor = {interval}
meter = {interval}
[[districts]]
name = "centre"
bbox = [45.184, 5.715, 45.196, 5.737]
devices.lighting = {{ streetlight = 4 }}
devices.mobility = {{ traffic_light = 3 }}
devices.environment = {{ air_sensor = 2 }}
devices.energy = {{ meter = {{ electricity = 2 }} }}
devices.water = {{ meter = {{ water = 1 }} }}
"""
_DEVICES = 12
# Simulated seconds per real second: the 60 s outage lasts 3 real seconds.
_SPEED = 20.0
_OUTAGE_SIM_S = 60.0
_FINAL = re.compile(
    r"published (\d+) of (\d+) messages \((\d+) refused by the broker, (\d+) dropped, "
    r"(\d+) unsent, (\d+) buffered while offline\) in \d+ s; simulated (\S+) to (\S+)"
)
_PROGRESS_AT = re.compile(r"^at (\S+): ")


@dataclass(frozen=True)
class Outcome:
    acknowledged: int
    generated: int
    refused: int
    dropped: int
    unsent: int
    buffered: int
    sim_start: datetime


@dataclass(frozen=True)
class City:
    scenario: Path
    fleet: Fleet
    prefix: str


@pytest.fixture
def city(tmp_path: Path, device_prefix: str) -> City:
    """A one-district city of 12 devices of every type, with the default fault rates."""
    slug = device_prefix.rstrip("-")
    path = tmp_path / "city.toml"
    path.write_text(_CITY.format(slug=slug, interval=_INTERVAL_S), encoding="utf-8")
    fleet = build_fleet(load_scenario(path))
    assert len(fleet) == _DEVICES
    return City(path, fleet, f"{slug}-")


@pytest.fixture
def secure(service_dir: Path, db_url: str) -> Iterator[SecureCity]:
    c = start_secure_city(service_dir, db_url)
    try:
        yield c
    finally:
        c.broker.stop()


def test_simulate_gives_its_fleet_secrets_and_runs_against_a_broker_that_enforces_them(
    secure: SecureCity, city: City, tmp_path: Path, start_ingestor: StartIngestor
) -> None:
    start_ingestor(secure.ingest_url, secure.db_url)
    env = {
        "SILOBREAK_DATABASE_URL": secure.db_url,
        # The plain device listener, with no credentials of its own: each device logs in as
        # itself.
        "SILOBREAK_MQTT_URL": f"mqtt://127.0.0.1:{secure.broker.device_port}",
        "SILOBREAK_BROKER_DIR": str(secure.files.directory),
        "SILOBREAK_REGISTRY_REFRESH": "200ms",  # as the ingestor's
    }
    first = simulate(tmp_path, city, env, "--since", "10m", "--max-messages", "24")
    assert first.returncode == 0, first.stderr
    assert f"({_DEVICES} new); {_DEVICES} new secret(s)" in first.stderr
    assert "broker reloaded" in first.stderr
    assert "the broker accepts the new secrets" in first.stderr
    secrets_file = tmp_path / DEFAULT_SECRETS_FILE
    secrets = read_secrets(secrets_file)
    assert set(secrets) == {d.device_id for d in city.fleet.devices}
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    broker = parse_broker_url(env["SILOBREAK_MQTT_URL"])
    device = city.fleet.devices[0].device_id
    assert refusal(broker, device, secrets[device]) is None
    assert refusal(broker, device, "not-" + secrets[device]) is not None

    # The same city again: every device keeps its secret (nothing to reload, nothing to wait for).
    second = simulate(tmp_path, city, env, "--since", "5m", "--max-messages", "120")
    assert second.returncode == 0, second.stderr
    assert "(0 new); 0 new secret(s)" in second.stderr
    assert "for ingest to load" not in second.stderr
    assert read_secrets(secrets_file) == secrets

    expected: Counter[Row] = Counter()
    for run, count in ((first, 24), (second, 120)):
        done = outcome(run)
        assert (done.acknowledged, done.refused, done.dropped, done.unsent) == (count, 0, 0, 0)
        # Disjoint: the runs start 5 minutes apart and last under a simulated minute each.
        expected += expected_rows(city.fleet, done.sim_start, done.generated)
    wait_until(
        lambda: Counter(stored_rows(secure.db_url, city.prefix)) == expected,
        60,
        "both runs' readings",
    )


def test_a_fleet_cut_off_for_60_simulated_seconds_delivers_every_buffered_reading_once(
    broker: LocalMosquitto,
    db_url: str,
    city: City,
    tmp_path: Path,
    start_ingestor: StartIngestor,
) -> None:
    # Registered (through the simulator's own path) before ingest starts, so ingest knows
    # every device from its first message on.
    with psycopg.connect(db_url, autocommit=True) as conn:
        provision(
            conn, city.fleet.records(), secrets_file=tmp_path / DEFAULT_SECRETS_FILE, actor="test"
        )
    start_ingestor(broker.url, db_url)
    everyone = f", {_DEVICES}/{_DEVICES} connected"
    with ThreadedProxy(broker.port) as proxy:
        env = {"SILOBREAK_DATABASE_URL": db_url, "SILOBREAK_MQTT_URL": proxy.url}
        args = ["simulate", "--scenario", str(city.scenario), "--since", "30m"]
        args += ["--speed", str(_SPEED), "--progress", "250ms"]
        sim = IngestProcess(cli_env(**env), tmp_path, args=args)
        try:
            sim.wait_for_log(everyone)
            wait_until(
                lambda: message_count(db_url, city.prefix) >= 2 * _DEVICES,
                30,
                "readings before the cut",
            )
            proxy.block()
            cut_at, lines_at_cut = time.monotonic(), len(sim.lines)
            sim.wait_for_log(f", 0/{_DEVICES} connected", start=lines_at_cut)
            # The fault itself: 60 s of simulated time with no way through to the broker.
            time.sleep(max(0.0, _OUTAGE_SIM_S / _SPEED - (time.monotonic() - cut_at)))
            proxy.unblock()
            sim.wait_for_log(everyone, start=len(sim.lines), timeout=60)
        finally:
            assert sim.stop() == 0, "\n".join(sim.lines[-20:])
    done = outcome_of_lines(sim.lines)
    assert (done.dropped, done.unsent, done.acknowledged) == (0, 0, done.generated)
    # Offline for at least 60 simulated seconds: at least 11 readings of each device waited.
    assert done.buffered >= _DEVICES * (_OUTAGE_SIM_S / _INTERVAL_S - 1)

    expected = expected_rows(city.fleet, done.sim_start, done.generated)
    wait_until(
        lambda: message_count(db_url, city.prefix) >= len(message_ids(expected)),
        60,
        "every buffered reading",
    )
    stored = Counter(stored_rows(db_url, city.prefix))
    assert stored == expected  # every reading, once, with the timestamp it was taken at
    # The run went on past the outage, so the readings compared above hold its whole window
    # (from the last progress report before the cut: at most 5 simulated seconds earlier).
    cut_sim = last_progress_at(sim.lines[:lines_at_cut])
    window_end = cut_sim + timedelta(seconds=_OUTAGE_SIM_S)
    assert max(r[2] for r in expected) >= window_end
    # (A count of the window's readings would depend on how many the fleet's configured
    # faults made malformed: those are dead-lettered, not expected in the store.)
    assert message_ids([r for r in expected if cut_sim < r[2] <= window_end])
    # What was not stored was rejected for its own fault, never for its time or its device.
    reasons = dict(query(db_url, "SELECT reason, count(*) FROM rejected_messages GROUP BY 1"))
    assert set(reasons) <= {"malformed_payload", "schema_violation"}


def test_simulate_registers_only_missing_devices_and_never_reactivates_a_decommissioned_one(
    broker: LocalMosquitto,
    db_url: str,
    city: City,
    tmp_path: Path,
    start_ingestor: StartIngestor,
) -> None:
    secrets_file = tmp_path / DEFAULT_SECRETS_FILE
    records = city.fleet.records()
    retired = {records[0].device_id, records[5].device_id}
    moved = records[1].device_id
    ids = {r.device_id for r in records}
    # A city registered earlier without its last device; then an operator takes two devices
    # off the street and hands one to another service.
    with psycopg.connect(db_url, autocommit=True) as conn:
        provision(conn, records[:-1], secrets_file=secrets_file, actor="test")
        decommission(conn, sorted(retired), actor="operator", reason="removed")
        transfer(conn, moved, "roads", actor="operator")
    before = read_secrets(secrets_file)
    start_ingestor(broker.url, db_url)
    env = {
        "SILOBREAK_DATABASE_URL": db_url,
        "SILOBREAK_MQTT_URL": broker.url,
        "SILOBREAK_REGISTRY_REFRESH": "200ms",  # as the ingestor's
    }
    run = simulate(tmp_path, city, env, "--since", "10m", "--max-messages", "120")
    assert run.returncode == 0, run.stderr
    assert "(1 new); 1 new secret(s) (0 replacing" in run.stderr
    said = [line for line in run.stderr.splitlines() if "decommissioned" in line]
    assert len(said) == 1, said
    assert said[0].startswith("left out 2 decommissioned device(s): not re-activated")

    # The registry as the operator left it, plus the missing device.
    rows = query(
        db_url,
        "SELECT device_id, lifecycle, service FROM devices WHERE device_id LIKE %s",
        city.prefix + "%",
    )
    assert {r[0] for r in rows} == ids
    assert {r[0] for r in rows if r[1] != "active"} == retired
    assert {r[0]: r[2] for r in rows}[moved] == "roads"
    owners = query(db_url, "SELECT service FROM device_ownership WHERE device_id = %s", moved)
    assert len(owners) == 2  # the first owner and the transfer, no transfer back
    live = query(
        db_url,
        "SELECT device_id FROM device_credentials WHERE device_id = ANY(%s) AND revoked_at IS NULL",
        sorted(retired),
    )
    assert live == []
    # The secrets file: the new device's secret added, the retired ones' (revoked) gone, every
    # other one unchanged.
    after = read_secrets(secrets_file)
    assert after.keys() == ids - retired
    assert {i: after[i] for i in before.keys() - retired} == {
        i: s for i, s in before.items() if i not in retired
    }

    # Nothing published for a decommissioned device: every message of the run was stored,
    # or dead-lettered for its own fault, never as unknown_device.
    done = outcome(run)
    assert (done.acknowledged, done.dropped, done.unsent) == (120, 0, 0)
    expected = expected_rows(city.fleet, done.sim_start, done.generated, leave_out=retired)
    assert not {r[0] for r in expected} & retired
    wait_until(
        lambda: Counter(stored_rows(db_url, city.prefix)) == expected, 60, "the run's readings"
    )
    reasons = dict(query(db_url, "SELECT reason, count(*) FROM rejected_messages GROUP BY 1"))
    assert set(reasons) <= {"malformed_payload", "schema_violation"}


# -- helpers ---------------------------------------------------------------------------------


def cli_env(**env: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")} | env


def simulate(
    cwd: Path, city: City, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    command = ["simulate", "--scenario", str(city.scenario), "--speed", str(_SPEED), *args]
    return subprocess.run(
        [sys.executable, "-m", "silobreak", *command],
        env=cli_env(**env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refusal(broker: BrokerAddress, device_id: str, secret: str) -> str | None:
    return connect_refusal(
        broker, client_id=f"{device_id}-check", username=device_id, password=secret, timeout=5.0
    )


def outcome(result: subprocess.CompletedProcess[str]) -> Outcome:
    return outcome_of_lines(result.stderr.splitlines())


def outcome_of_lines(lines: list[str]) -> Outcome:
    match = next((m for line in reversed(lines) if (m := _FINAL.search(line))), None)
    assert match is not None, "\n".join(lines[-20:])
    acked, generated, refused, dropped, unsent, buffered = (int(match[i]) for i in range(1, 7))
    start = datetime.fromisoformat(match[7])
    return Outcome(acked, generated, refused, dropped, unsent, buffered, start)


def last_progress_at(lines: list[str]) -> datetime:
    stamps = [m[1] for line in lines if (m := _PROGRESS_AT.match(line)) and m[1] != "start"]
    assert stamps, "no progress line before the cut"
    return datetime.fromisoformat(stamps[-1])


def expected_rows(
    fleet: Fleet, start: datetime, count: int, *, leave_out: Collection[str] = ()
) -> Counter[Row]:
    """One row per metric of every well-formed reading among the first `count` messages
    (of the devices not left out of the run)."""
    rows: Counter[Row] = Counter()
    every = messages(fleet, start, start + timedelta(days=1))
    sent = itertools.islice((m for m in every if m.device_id not in leave_out), count)
    for message in sent:
        if message.kind != "ok":  # broken, out of range (rejected), a repeat, or an event
            continue
        ts, metrics = decode(message.payload)
        for name, raw in metrics.items():
            value = PHASE_CODES[raw] if isinstance(raw, str) else raw
            rows[(message.device_id, name, ts, float(value))] += 1
    return rows


def message_ids(rows: Iterable[Row]) -> set[tuple[str, datetime]]:
    return {(device_id, time) for device_id, _, time, _ in rows}


def stored_rows(db_url: str, prefix: str) -> list[Row]:
    return [
        (str(r[0]), str(r[1]), r[2], float(r[3]))
        for r in query(
            db_url,
            "SELECT device_id, metric, time, value FROM readings WHERE device_id LIKE %s",
            prefix + "%",
        )
    ]
