"""`silobreak principals`, the devices lifecycle verbs and `broker-config` from the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    return subprocess.run(
        [sys.executable, "-m", "silobreak", *args],
        env={**clean, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def shown(output: str, label: str) -> str:
    """The value printed after `label` (a secret or token shown once)."""
    line = next(x for x in output.splitlines() if x.startswith(label))
    return line.rsplit(" ", 1)[1]


@pytest.mark.integration
def test_principals_get_broker_accounts_and_tokens_that_can_be_revoked(
    tmp_path: Path, db_url: str
) -> None:
    db = {"SILOBREAK_DATABASE_URL": db_url}
    added = ok(cli(tmp_path, "principals", "add", "lighting", "--kind", "service", **db))
    assert "broker user: service~lighting" in added
    assert len(shown(added, "broker secret")) == 43

    issued = ok(cli(tmp_path, "principals", "token", "issue", "lighting", "--ttl", "1d", **db))
    token_id = issued.split()[1]
    assert shown(issued, "bearer token").startswith("sbk_")
    listed = ok(cli(tmp_path, "principals", "list", "--format", "json", **db))
    assert json.loads(listed)["live_tokens"] == 1
    assert token_id in ok(cli(tmp_path, "principals", "token", "list", "lighting", **db))
    ok(cli(tmp_path, "principals", "token", "revoke", token_id, **db))
    listed = ok(cli(tmp_path, "principals", "list", "--format", "json", **db))
    assert json.loads(listed)["live_tokens"] == 0

    again = cli(tmp_path, "principals", "add", "lighting", "--kind", "service", **db)
    assert "already exists" in one_clear_line(again)
    ghost = cli(tmp_path, "principals", "token", "issue", "ghost", **db)
    assert "no principal 'ghost'" in one_clear_line(ghost)
    ok(cli(tmp_path, "principals", "add", "ingest", "--kind", "component", **db))
    component = cli(tmp_path, "principals", "token", "issue", "ingest", **db)
    assert "broker account, not API tokens" in one_clear_line(component)


@pytest.mark.integration
def test_a_device_added_gets_its_secret_once_and_lifecycle_verbs_work(
    tmp_path: Path, db_url: str
) -> None:
    db = {"SILOBREAK_DATABASE_URL": db_url}
    added = cli(tmp_path, "devices", "add", "lamp-1", "--type", "streetlight", **db)
    assert len(shown(ok(added), "secret")) == 43
    assert "SILOBREAK_BROKER_DIR is not set" in added.stderr
    assert "secret" not in ok(
        cli(tmp_path, "devices", "add", "lamp-1", "--type", "streetlight", **db)
    )

    rows = ok(cli(tmp_path, "devices", "list", "--lifecycle", "active", "--format", "json", **db))
    assert json.loads(rows)["credential"] == "active"
    moved = ok(cli(tmp_path, "devices", "transfer", "lamp-1", "energy", "--no-settle", **db))
    assert "lighting -> energy" in moved
    history = ok(cli(tmp_path, "devices", "history", "lamp-1", **db))
    assert "device.transfer" in history and "energy" in history
    erased = ok(cli(tmp_path, "devices", "erase", "lamp-1", "--reason", "req-7", "--yes", **db))
    assert "erased 0 reading row(s)" in erased
    ok(cli(tmp_path, "devices", "decommission", "lamp-1", "--reason", "replaced", **db))
    rows = ok(
        cli(tmp_path, "devices", "list", "--lifecycle", "decommissioned", "--format", "json", **db)
    )
    assert json.loads(rows)["credential"] == "revoked"

    bad_time = cli(tmp_path, "devices", "transfer", "lamp-1", "water", "--at", "yesterday", **db)
    assert "--at" in one_clear_line(bad_time)
    gone = cli(tmp_path, "devices", "rotate-secret", "ghost", **db)
    assert "no device 'ghost'" in one_clear_line(gone)


def test_broker_config_for_deployment_needs_a_certificate(tmp_path: Path) -> None:
    result = cli(tmp_path, "broker-config", "--profile", "deploy", "--dir", str(tmp_path / "b"))
    assert "needs a TLS certificate" in one_clear_line(result)


def test_broker_config_for_development_makes_its_ca_and_a_tls_listener(tmp_path: Path) -> None:
    out = ok(cli(tmp_path, "broker-config", "--dir", str(tmp_path / "b"), "--output", "-"))
    assert "allow_anonymous false" in out
    assert "listener 1883 127.0.0.1" in out
    assert "listener 8883 127.0.0.1" in out
    assert "use_username_as_clientid true" in out
    assert "max_queued_messages 1000000" in out
    assert (tmp_path / "b" / "certs" / "ca.crt").is_file()
    assert (tmp_path / "b" / "certs" / "server.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.integration
def test_broker_sync_watch_rewrites_the_files_when_the_registry_changes(
    tmp_path: Path, db_url: str
) -> None:
    broker_dir = tmp_path / "broker"
    ok(cli(tmp_path, "broker-config", "--dir", str(broker_dir), "--no-dev-certs"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "silobreak", "broker-sync", "--watch", "--dir", str(broker_dir)],
        env={**env, "SILOBREAK_DATABASE_URL": db_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stderr is not None
        assert "broker files written" in watcher.stderr.readline()  # the first sync
        ok(cli(tmp_path, "devices", "add", "lamp-9", "--type", "streetlight",
               SILOBREAK_DATABASE_URL=db_url))  # fmt: skip
        assert "broker files written (1 device" in watcher.stderr.readline()
        devices = (broker_dir / "passwd.devices").read_text().splitlines()
        assert devices[-1].startswith("lamp-9:$7$")
        assert "lamp-9" not in (broker_dir / "passwd").read_text()  # not on the platform listener
    finally:
        watcher.terminate()
        watcher.wait(30)
        if watcher.stderr is not None:
            watcher.stderr.close()
