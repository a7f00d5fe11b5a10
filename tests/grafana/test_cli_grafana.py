"""`silobreak grafana build --check` and `silobreak grafana roles --secrets-dir`."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from silobreak.cli import main


def test_build_check_passes_on_the_committed_dashboards_and_fails_on_a_stale_copy(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["grafana", "build", "--check"])
    assert ok.exit_code == 0, ok.output
    written = runner.invoke(main, ["grafana", "build", "--output", str(tmp_path)])
    assert written.exit_code == 0, written.output
    (tmp_path / "platform" / "silobreak-platform.json").write_text("{}\n")
    stale = runner.invoke(main, ["grafana", "build", "--check", "--output", str(tmp_path)])
    assert stale.exit_code == 1
    assert "silobreak-platform.json: differs from its code" in stale.output


@pytest.mark.integration
def test_roles_makes_a_password_file_per_role_and_keeps_it_on_a_second_run(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO principals (name, kind) VALUES ('lighting', 'service')")
    monkeypatch.setenv("SILOBREAK_DATABASE_URL", db_url)
    secrets = tmp_path / "secrets"
    runner = CliRunner()
    first = runner.invoke(main, ["grafana", "roles", "--secrets-dir", str(secrets)])
    assert first.exit_code == 0, first.output
    assert "grafana_lighting: " in first.output and "reads as lighting" in first.output
    files = {p.name: p for p in secrets.iterdir()}
    assert set(files) == {"grafana_lighting", "grafana_platform"}
    password = files["grafana_lighting"].read_text()
    assert len(password) >= 24
    assert stat.S_IMODE(files["grafana_lighting"].stat().st_mode) == 0o640
    again = runner.invoke(main, ["grafana", "roles", "--secrets-dir", str(secrets)])
    assert again.exit_code == 0, again.output
    assert files["grafana_lighting"].read_text() == password


@pytest.mark.integration
def test_roles_gives_the_coordinator_and_region_datasources_their_principals_passwords(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Database roles are the server's, not the database's: names of this test's own.
    office, team = f"office-{uuid.uuid4().hex[:8]}", f"team-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO principals (name, kind) VALUES (%s, 'coordinator'), (%s, 'team')",
            (office, team),
        )
    monkeypatch.setenv("SILOBREAK_DATABASE_URL", db_url)
    secrets = tmp_path / "secrets"
    args = ["grafana", "roles", "--secrets-dir", str(secrets)]
    runner = CliRunner()
    done = runner.invoke(main, [*args, "--coordinator", office, "--region", team])
    assert done.exit_code == 0, done.output
    assert f"grafana_{office}: created, reads as {office}" in done.output
    assert (secrets / "coordinator").read_text() == (secrets / f"grafana_{office}").read_text()
    assert (secrets / "region").read_text() == (secrets / f"grafana_{team}").read_text()
    unknown = runner.invoke(main, [*args, "--coordinator", "nobody"])
    assert unknown.exit_code != 0
    assert "grafana_nobody is no viewer's role" in unknown.output
    assert "Traceback" not in unknown.output
