"""The command line: wrong settings and arguments get one clear line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from silobreak.local import free_port


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    return subprocess.run(
        [sys.executable, "-m", "silobreak", *args],
        env={**clean, "SILOBREAK_METRICS_PORT": "0", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.integration
def test_ingest_with_an_unreachable_broker_says_so_in_one_line(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    result = cli(
        tmp_path,
        "ingest",
        SILOBREAK_DATABASE_URL=db_url,
        SILOBREAK_MQTT_URL=f"mqtt://127.0.0.1:{port}",
    )
    line = one_clear_line(result)
    assert f"127.0.0.1:{port}" in line


def test_ingest_with_an_unreachable_database_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = cli(
        tmp_path, "ingest", SILOBREAK_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x"
    )
    line = one_clear_line(result)
    assert "database" in line
    assert str(port) in line


@pytest.mark.integration
def test_ingest_with_a_bad_broker_url_says_so_in_one_line(tmp_path: Path, db_url: str) -> None:
    result = cli(
        tmp_path, "ingest", SILOBREAK_DATABASE_URL=db_url, SILOBREAK_MQTT_URL="http://x:1883"
    )
    assert "mqtt" in one_clear_line(result).lower()


def test_a_malformed_setting_names_the_variable(tmp_path: Path) -> None:
    result = cli(tmp_path, "migrate", SILOBREAK_INGEST_BATCH_INTERVAL="soon")
    line = one_clear_line(result)
    assert "SILOBREAK_INGEST_BATCH_INTERVAL" in line
    assert "duration" in line


def test_a_malformed_database_url_says_so_in_one_line(tmp_path: Path) -> None:
    result = cli(tmp_path, "migrate", SILOBREAK_DATABASE_URL="postgresql://[bad")
    one_clear_line(result)


def test_a_settings_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / "silobreak.toml").write_text('ingest_batch_interval = "later"\n')
    assert "SILOBREAK_INGEST_BATCH_INTERVAL" in one_clear_line(cli(tmp_path, "migrate"))
    port = free_port()
    result = cli(
        tmp_path,
        "migrate",
        SILOBREAK_INGEST_BATCH_INTERVAL="1s",
        SILOBREAK_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x",
    )
    assert "database" in one_clear_line(result)


def test_a_wrong_argument_gets_a_usage_message(tmp_path: Path) -> None:
    result = cli(tmp_path, "devices", "add", "lamp-1", "--type", "toaster")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "toaster" in result.stderr


@pytest.mark.integration
def test_devices_import_and_list_round_trip(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    good = tmp_path / "fleet.csv"
    good.write_text(
        "device_id,device_type,service,district,medium\n"
        f"{device_prefix}m1,meter,water,north,water\n"
        f"{device_prefix}a1,air_sensor,environment,south,\n"
    )
    assert (
        cli(tmp_path, "devices", "import", str(good), SILOBREAK_DATABASE_URL=db_url).returncode == 0
    )
    listed = cli(tmp_path, "devices", "list", "--format", "csv", SILOBREAK_DATABASE_URL=db_url)
    assert listed.returncode == 0
    assert f"{device_prefix}m1,meter,water,north,water,active,offline," in listed.stdout
    assert f"{device_prefix}a1,air_sensor,environment,south" in listed.stdout


@pytest.mark.integration
def test_devices_import_of_a_bad_file_imports_nothing_and_lists_lines(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "device_id,device_type,service\n"
        f"{device_prefix}ok,meter,energy\n"
        f"{device_prefix}x,toaster,energy\n"
    )
    line = one_clear_line(
        cli(tmp_path, "devices", "import", str(bad), SILOBREAK_DATABASE_URL=db_url)
    )
    assert "line 3" in line
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)


@pytest.mark.integration
def test_rejects_list_shows_dead_letters(tmp_path: Path, db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO rejected_messages (received_at, topic, device_id, reason, detail, payload)"
            " VALUES (now(), 'devices/x/telemetry', 'x', 'unknown_device', 'not registered', 'hi')"
        )
    out = cli(
        tmp_path, "rejects", "list", "--reason", "unknown_device", SILOBREAK_DATABASE_URL=db_url
    )
    assert out.returncode == 0
    assert "unknown_device" in out.stdout
    assert "not registered" in out.stdout


def test_a_bad_catalog_file_gets_one_line_naming_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text('[[types]]\nname = "bin"\nservice = "cleansing"\n', encoding="utf-8")
    line = one_clear_line(cli(tmp_path, "migrate", SILOBREAK_CATALOG=str(path)))
    assert f"catalog {path}: types.0.description" in line
    line = one_clear_line(
        cli(tmp_path, "devices", "list", SILOBREAK_CATALOG=str(tmp_path / "absent.toml"))
    )
    assert "absent.toml" in line


@pytest.mark.integration
def test_a_catalog_that_drops_a_migrated_type_is_refused_in_one_line(
    tmp_path: Path, db_url: str
) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[[types]]\nname = "bin"\nservice = "cleansing"\ndescription = "A bin."\n'
        '[[types.metrics]]\nname = "full"\nkind = "bool"\ndescription = "Full."\n',
        encoding="utf-8",
    )
    env = {"SILOBREAK_DATABASE_URL": db_url, "SILOBREAK_CATALOG": str(path)}
    added = cli(tmp_path, "migrate", **env)
    assert added.stdout.strip() == "applied: device type bin", added.stderr
    line = one_clear_line(cli(tmp_path, "migrate", SILOBREAK_DATABASE_URL=db_url))
    assert "the catalog has no device type 'bin'" in line


def test_demo_prints_rejects_by_reason_most_frequent_first() -> None:
    from silobreak.cli.run import rejects_text  # noqa: PLC0415

    counts = {"schema_violation": 5, "malformed_payload": 8, "unknown_device": 5}
    assert rejects_text(counts) == "malformed_payload 8, schema_violation 5, unknown_device 5"
    assert rejects_text({}) == "none"


def test_bench_simulator_without_aiomqtt_names_the_bench_extra_in_one_line(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    # As an install without the `bench` extra: `import aiomqtt` fails.
    without = "import sys; sys.modules['aiomqtt'] = None; from silobreak.cli import main; main()"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", without, *args],
            env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    assert run("bench", "simulator", "--help").returncode == 0  # the CLI itself imports
    result = run("bench", "simulator", "--devices", "1", "--runs", "1")
    assert result.returncode == 1
    said = (
        "Error: the simulator benchmark's baseline needs aiomqtt: pip install 'silobreak[bench]'"
        " (or run `silobreak bench simulator --no-baseline`)"
    )
    assert result.stderr.splitlines() == [said]
