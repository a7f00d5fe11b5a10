"""`silobreak grants` and `silobreak subscribe` against the running API."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
from click.testing import CliRunner

from silobreak.cli import main
from tests.streams.conftest import Town

pytestmark = pytest.mark.integration


def test_grants_are_created_listed_and_revoked_and_subscribe_prints_readings(
    town: Town, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SILOBREAK_API_URL", town.base)
    runner = CliRunner()

    def run(who: str, *args: str) -> str:
        result = runner.invoke(
            main, ["--debug", *args], env={"SILOBREAK_API_TOKEN": town.tokens[who]}
        )
        assert result.exit_code == 0, result.output
        return result.output

    out = run("mobility", "grants", "create", "--owner", "mobility", "--consumer", "planning",
              "--type", "traffic_light", "--metric", "vehicle_count", "--purpose", "study",
              "--expires", "30d")  # fmt: skip
    grant_id = out.split()[1].rstrip(":")
    assert out.strip() == f"grant {grant_id}: active"
    listed = run("planning", "grants", "list", "--format", "json")
    assert json.loads(listed.splitlines()[0])["metrics"] == "vehicle_count"
    town.write("traffic_light", [(datetime.now(UTC), f"{town.prefix}tl-n1", 2, 4)])
    printed = run("planning", "subscribe", "--grant", grant_id, "--since", "1h", "--count", "1")
    assert json.loads(printed)["value"] == 4.0
    assert run("mobility", "grants", "revoke", grant_id).strip() == f"grant {grant_id}: revoked"
    refused = runner.invoke(main, ["grants", "approve", grant_id],
                            env={"SILOBREAK_API_TOKEN": town.tokens["planning"]})  # fmt: skip
    assert refused.exit_code == 1
    assert "403 not_owner" in refused.output


def test_subscribe_piped_into_a_reader_that_stops_ends_quietly_without_request_logs(
    town: Town, tmp_path: Path
) -> None:
    p = town.prefix
    grant = town.grant("mobility", consumer="planning", device_types=["traffic_light"],
                       metrics=["vehicle_count"])  # fmt: skip
    now = datetime.now(UTC)
    # More history than a pipe holds (64 KiB): the command is still printing when `head` quits.
    town.write(
        "traffic_light", [(now - timedelta(seconds=s), f"{p}tl-n1", 2, s) for s in range(1000)]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    env |= {"SILOBREAK_API_URL": town.base, "SILOBREAK_API_TOKEN": town.tokens["planning"]}
    command = [sys.executable, "-m", "silobreak", "subscribe", "--grant", str(grant["id"]),
               "--since", "1h"]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = _line_within(proc.stdout, 30)
        assert json.loads(first)["metric"] == "vehicle_count"
        proc.stdout.close()  # as `head -1` does once it has its line
        deadline = time.monotonic() + 60
        k = 0
        while proc.poll() is None:
            assert time.monotonic() < deadline, "subscribe kept running with its reader gone"
            # Live readings too, should the history have fitted in the pipe.
            town.write("traffic_light", [(datetime.now(UTC), f"{p}tl-n1", 2, k)])
            k += 1
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
        stderr = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert "unreachable" not in stderr and "Traceback" not in stderr, stderr
    assert "Broken pipe" not in stderr and "HTTP Request" not in stderr, stderr


def _line_within(stream: IO[bytes], timeout: float) -> str:
    """The first line of `stream`, failing the test if none comes within `timeout` s."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        assert selector.select(timeout), f"no line within {timeout} s"
    return stream.readline().decode()


def test_grants_odrl_prints_an_agreement_that_request_odrl_turns_into_a_request(
    town: Town, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SILOBREAK_API_URL", town.base)
    grant = town.grant("mobility", consumer="planning", device_types=["traffic_light"])
    env = {"SILOBREAK_API_TOKEN": town.tokens["planning"]}
    runner = CliRunner()
    exported = runner.invoke(main, ["grants", "odrl", str(grant["id"])], env=env)
    assert exported.exit_code == 0, exported.output
    agreement = json.loads(exported.output)
    assert (agreement["@type"], agreement["permission"][0]["action"]) == ("Agreement", "read")
    offer = tmp_path / "offer.jsonld"
    offer.write_text(json.dumps({**agreement, "@type": "Offer"}), encoding="utf-8")
    requested = runner.invoke(main, ["grants", "request-odrl", str(offer)], env=env)
    assert requested.exit_code == 0, requested.output
    assert requested.output.strip().endswith(": requested")
    offer.write_text(json.dumps({**agreement, "@type": "Offer", "duty": []}), encoding="utf-8")
    refused = runner.invoke(main, ["grants", "request-odrl", str(offer)], env=env)
    assert refused.exit_code == 1
    assert "422 odrl_unsupported: duty" in refused.output
