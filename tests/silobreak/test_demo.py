"""`silobreak demo`: its own broker and database, data flowing, and a clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _the_printed_api_and_subscription_work(out: str, env: dict[str, str], cwd: Path) -> None:
    """The API docs answer, and the sample subscription command prints the granted readings."""
    docs = re.search(r"API docs\s+(\S+)", out)
    command = re.search(r"subscribe\s+(SILOBREAK_API_URL=\S+) (SILOBREAK_API_TOKEN=\S+) \\\n"
                        r"\s+silobreak subscribe (.+)\n", out)  # fmt: skip
    assert docs and command, out
    with urllib.request.urlopen(docs[1], timeout=10) as page:
        assert page.status == 200
    extra = dict(kv.split("=", 1) for kv in (command[1], command[2]))
    result = subprocess.run(
        [sys.executable, "-m", "silobreak", "subscribe", *command[3].split(), "--count", "3"],
        cwd=cwd, env={**env, **extra}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    readings = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(readings) == 3
    assert {(r["service"], r["metric"]) for r in readings} == {("mobility", "vehicle_count")}


def _the_printed_region_commands_work(out: str, env: dict[str, str], cwd: Path) -> None:
    """The syndicate's pooled feed spans the three municipalities' contracts, and the city's
    coordinator sees that read leave its organisation."""

    def printed(label: str) -> tuple[dict[str, str], list[str]]:
        found = re.search(label + r"\s+(SILOBREAK_API_URL=\S+) (SILOBREAK_API_TOKEN=\S+) \\\n"
                          r"\s+silobreak (.+)\n", out)  # fmt: skip
        assert found, out
        return dict(kv.split("=", 1) for kv in (found[1], found[2])), found[3].split()

    def run(extra: dict[str, str], args: list[str]) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "silobreak", *args], cwd=cwd, env={**env, **extra},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    extra, args = printed("pooled")
    assert args[0] == "regional"
    body = json.loads(run(extra, [*args, "--format", "json"]))
    assert {t["owner_org"] for t in body["terms"]} == {"city", "echirolles", "eybens"}
    assert {t["consumer_org"] for t in body["terms"]} == {"te38"}
    assert all(r["devices"] >= 5 for r in body["rows"])
    extra, args = printed("flows")
    flows = [json.loads(line) for line in run(extra, [*args, "--format", "json"]).splitlines()]
    # The syndicate's read, out of the city (beside the city's own internal subscription).
    assert ("out", "te38") in {(f["direction"], f["consumer_org"]) for f in flows}


def test_demo_shows_data_within_a_minute_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "silobreak", "demo", "--devices", "40"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        stored = 0
        deadline = time.monotonic() + 60
        lines = []
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"(\d+) stored", line)
            if match and int(match[1]) > 0:
                stored = int(match[1])
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert stored > 0, "".join(lines)
        # The migrations in one line; rejects as `reason n, ...`, never a Python dict.
        migrated = [x for x in lines if "migrat" in x]
        assert len(migrated) == 1, "".join(lines)
        assert re.fullmatch(r"migrated: [1-9]\d* migrations applied\n", migrated[0]), migrated
        progress = [x for x in lines if " stored " in x]
        assert progress, "".join(lines)
        assert all(re.search(r"rejects (none|[a-z_]+ \d+(, [a-z_]+ \d+)*)$", x) for x in progress)
        _the_printed_api_and_subscription_work("".join(lines), env, tmp_path)
        _the_printed_region_commands_work("".join(lines), env, tmp_path)
        servers = _descendants(proc.pid)
        assert servers, "the demo runs its broker and database as child processes"

        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopped" in out
        left = [pid for pid in servers if Path(f"/proc/{pid}").exists()]
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
