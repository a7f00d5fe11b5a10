"""Adding a device type is data: a catalog file and `silobreak migrate`, no code change.

The new type goes the whole way: migrate creates its objects in an existing database and
records the catalog; `silobreak devices add` and `silobreak streams`, started without the
file, and `silobreak ingest`, already running, read that catalog from the database: they
register the device, validate and store its telemetry, and serve it under a grant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from silobreak.local import LocalMosquitto, free_port
from store.principals import add_principal, issue_token
from tests.e2e.harness import REPO, IngestProcess, publish, query, wait_until

WASTE_BIN = """
[[types]]
name = "waste_bin"
service = "cleansing"
description = "A street litter bin with a fill-level sensor."
interval = "30m"

[[types.metrics]]
name = "fill_pct"
kind = "number"
unit = "%"
min = 0
max = 100
description = "How full the bin is."

[[types.metrics]]
name = "lid_open"
kind = "bool"
description = "The lid is open."
"""


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(WASTE_BIN, encoding="utf-8")
    return path


@pytest.fixture
def streams_api(tmp_path: Path) -> Iterator[Callable[[str, str], str]]:
    started: list[IngestProcess] = []

    def start(mqtt_url: str, db_url: str) -> str:
        port = free_port()
        env = {
            "SILOBREAK_DATABASE_URL": db_url,
            "SILOBREAK_MQTT_URL": mqtt_url,
            "SILOBREAK_API_PORT": str(port),
        }
        proc = IngestProcess(env, tmp_path, args=("streams",))
        started.append(proc)
        proc.wait_for_log("Uvicorn running")
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.stop()


def test_a_type_added_by_a_catalog_file_is_ingested_stored_and_read_back_under_a_grant(
    db_url: str,
    device_prefix: str,
    catalog_file: Path,
    broker: LocalMosquitto,
    start_ingestor: Callable[..., IngestProcess],
    streams_api: Callable[[str, str], str],
) -> None:
    # Ingest and the API run before the type exists, as in a city that adds one.
    ingest = start_ingestor(broker.url, db_url)
    base = streams_api(broker.url, db_url)
    env = {**os.environ, "SILOBREAK_DATABASE_URL": db_url, "SILOBREAK_CATALOG": str(catalog_file)}
    migrated = subprocess.run(
        [sys.executable, "-m", "silobreak", "migrate"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == "applied: device type waste_bin"
    again = subprocess.run(
        [sys.executable, "-m", "silobreak", "migrate"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.stdout.strip() == "schema is up to date"

    # Registered without the file: the CLI reads the types the store was migrated for.
    bin_id = f"{device_prefix}bin-1"
    plain = {k: v for k, v in env.items() if k != "SILOBREAK_CATALOG"}
    added = subprocess.run(
        [sys.executable, "-m", "silobreak", "devices", "add", bin_id, "--type", "waste_bin",
         "--district", "north"],
        env=plain, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert f"registered {bin_id} (waste_bin, cleansing)" in added.stdout
    with psycopg.connect(db_url, autocommit=True) as conn:
        for name, kind in (("cleansing", "service"), ("planning", "team")):
            add_principal(conn, name, kind, actor="test")
        tokens = {
            name: issue_token(conn, name, ttl=timedelta(hours=1), actor="test").token
            for name in ("cleansing", "planning")
        }

    # Registering the device makes the running ingestor reload the registry, and with it the
    # catalog recorded in the database.
    reloaded = ingest.wait_for_log("device catalog reloaded")
    assert "waste_bin" in ingest.lines[reloaded]
    ingest.wait_for_log("registry reloaded", start=reloaded)
    now = datetime.now(UTC).replace(microsecond=0)
    times = [now - timedelta(minutes=30 * k) for k in (3, 2, 1)]
    fills = [20.0, 55.5, 91.0]
    items = [
        (
            f"devices/{bin_id}/telemetry",
            json.dumps(
                {"ts": t.isoformat(), "metrics": {"fill_pct": f, "lid_open": f > 90}}
            ).encode(),
        )
        for t, f in zip(times, fills, strict=True)
    ]
    # A metric the type does not have: the new type's schema rejects the message.
    items.append((f"devices/{bin_id}/telemetry", b'{"metrics": {"weight_kg": 3}}'))
    publish(broker.url, items, f"{device_prefix}pub")
    wait_until(
        lambda: query(db_url, "SELECT count(*) FROM rejected_messages")[0][0] == 1,
        60, "the bad message dead-lettered",
    )  # fmt: skip
    stored = query(
        db_url, "SELECT time, service, fill_pct, lid_open FROM readings_waste_bin ORDER BY time"
    )
    assert stored == [(t, "cleansing", f, int(f > 90)) for t, f in zip(times, fills, strict=True)]
    assert query(db_url, "SELECT reason FROM rejected_messages") == [("schema_violation",)]

    with httpx.Client(base_url=base, timeout=30) as http:
        owner = {"Authorization": f"Bearer {tokens['cleansing']}"}
        reader = {"Authorization": f"Bearer {tokens['planning']}"}
        body = {
            "owner": "cleansing", "consumer": "planning", "device_types": ["waste_bin"],
            "metrics": ["fill_pct"], "granularity": "raw", "purpose": "collection rounds",
            "expires_at": (now + timedelta(days=1)).isoformat(),
        }  # fmt: skip
        # The running API adopts the recorded catalog within its poll (5 s); until then the
        # type is unknown to it and the request is refused with that reason.
        answers: list[httpx.Response] = []

        def known() -> bool:
            answers.append(http.post("/v1/grants", headers=owner, json=body))
            return answers[-1].status_code != 422

        wait_until(known, 30, "the API to know waste_bin", interval=0.5)
        grant = answers[-1]
        assert grant.status_code == 201, grant.text
        assert all("unknown device type 'waste_bin'" in a.text for a in answers[:-1])
        start = (now - timedelta(hours=3)).isoformat()
        page = http.get(
            "/v1/history", headers=reader, params={"start": start, "grant_id": grant.json()["id"]}
        )
        assert page.status_code == 200, page.text
        got = [
            (r["device_id"], r["device_type"], r["metric"], r["value"])
            for r in page.json()["readings"]
        ]
        assert got == [(bin_id, "waste_bin", "fill_pct", f) for f in fills]
        unknown = http.get(
            "/v1/history", headers=reader, params={"start": start, "device_type": "toaster"}
        )
        assert unknown.status_code == 422
        assert "unknown device type 'toaster'" in unknown.text
