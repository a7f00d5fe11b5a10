"""`silobreak simulate` and `silobreak bench simulator` on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    return subprocess.run(
        [sys.executable, "-c", _ENTRY, *args],
        env=clean | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


_ENTRY = "from silobreak.cli import main; main()"


def test_simulate_refuses_a_start_older_than_ingest_accepts(tmp_path: Path) -> None:
    def simulate(*args: str) -> subprocess.CompletedProcess[str]:
        env = {"SILOBREAK_INGEST_MAX_AGE": "1h", "SILOBREAK_DATABASE_URL": "postgresql://x@/y"}
        return cli(tmp_path, "simulate", "--devices", "5", *args, **env)

    too_old = simulate("--since", "1h")
    assert too_old.returncode != 0
    assert "Traceback" not in too_old.stderr
    assert "SILOBREAK_INGEST_MAX_AGE = 1h" in too_old.stderr
    # 58 minutes plus the fleet's 60 s of clock skew fit: it goes on to the database.
    in_window = simulate("--since", "58m")
    assert in_window.returncode != 0
    assert "database" in in_window.stderr
    assert "INGEST_MAX_AGE" not in in_window.stderr


@pytest.mark.integration
def test_bench_simulator_measures_both_fleets_on_a_small_city(tmp_path: Path) -> None:
    args = "bench simulator --devices 20 --interval 1 --seconds 2 --warmup 0 --runs 1"
    result = cli(tmp_path, *args.split())
    assert result.returncode == 0, result.stderr
    rows = {
        line.split("|")[1].strip(): line
        for line in result.stdout.splitlines()
        if line.startswith("| ")
    }
    assert set(rows) >= {"silobreak", "aiomqtt"}
    for system in ("silobreak", "aiomqtt"):
        rate = float(rows[system].split("|")[3].replace(",", ""))
        assert rate > 5, rows[system]  # 20 devices offer 20 msg/s
