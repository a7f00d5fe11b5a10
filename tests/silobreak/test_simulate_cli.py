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


def test_simulate_takes_the_devices_mqtt_version_from_the_broker_url(tmp_path: Path) -> None:
    from silobreak.cli.run import _devices_version  # noqa: PLC0415

    assert _devices_version("mqtt://127.0.0.1:1883", None) == "5"
    assert _devices_version("mqtt://127.0.0.1:1883?protocol=3.1.1", None) == "3.1.1"
    # Old devices against an MQTT 5 broker are a city's everyday.
    assert _devices_version("mqtt://127.0.0.1:1883", "3.1.1") == "3.1.1"
    # A broker that speaks only 3.1.1 cannot take MQTT 5 devices: one clear line.
    env = {"SILOBREAK_MQTT_URL": "mqtt://127.0.0.1:1883?protocol=3.1.1"}
    both = cli(tmp_path, "simulate", "--devices", "5", "--mqtt-version", "5", **env)
    assert both.returncode == 2
    assert "Traceback" not in both.stderr
    assert "--mqtt-version 5 disagrees with the broker URL's ?protocol=3.1.1" in both.stderr
    bad = cli(tmp_path, "simulate", "--devices", "5", SILOBREAK_MQTT_URL="mqtt://h?protocol=4")
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "protocol" in bad.stderr


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
