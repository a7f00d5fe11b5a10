"""`silobreak grants` and `silobreak subscribe` against the running API."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

import silobreak.cli_streams  # noqa: F401 - registers the commands
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
