"""`silobreak backfill`, `retention`, `maintain` and `query` from the shell, on plain PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from tests.store.store_helpers import NOW, city, readings, register, write
from tests.support.victoria import LocalVictoria

pytestmark = pytest.mark.integration

_ENTRY = "from silobreak.cli import main; main(prog_name='silobreak')"


def cli(tmp_path: Path, db_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    return subprocess.run(
        [sys.executable, "-c", _ENTRY, *args],
        env={**clean, "SILOBREAK_DATABASE_URL": db_url, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_backfill_a_csv_validates_like_ingest_and_loads_once(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
    old = (NOW - timedelta(days=20)).replace(hour=1)  # far older than ingest's 7-day window
    lines = ["time,device_id,metric,value"]
    for k in range(30):
        at = (old + timedelta(minutes=10 * k)).isoformat()
        lines += [f"{at},{device_prefix}air-1,pm25,{k / 2}", f"{at},{device_prefix}air-1,no2,{k}"]
    lines += [
        f"{old.isoformat()},{device_prefix}air-1,pm25,5000",  # out of range: the whole message
        f"{old.isoformat()},nobody,pm25,1",  # unknown device
        f"{old.replace(tzinfo=None).isoformat()},{device_prefix}lamp-1,lamp_on,true",  # no offset
        f"{int(old.timestamp() * 1000)},{device_prefix}lamp-1,lamp_on,true",  # epoch ms: fine
    ]
    narrow = tmp_path / "history.csv"
    narrow.write_text("\n".join(lines) + "\n", encoding="utf-8")
    wide = tmp_path / "wide.csv"
    wide.write_text(
        f"time,device_id,index,flow\n{old.isoformat()},{device_prefix}meter-w,12.5,\n",
        encoding="utf-8",
    )

    out = ok(cli(tmp_path, db_url, "backfill", str(narrow)))
    assert "34 messages" in out and "31 rows stored" in out
    assert "schema_violation 2" in out and "unknown_device 1" in out
    assert "0 rows stored" in ok(cli(tmp_path, db_url, "backfill", str(narrow)))  # idempotent
    assert "1 rows stored" in ok(cli(tmp_path, db_url, "backfill", str(wide)))

    with psycopg.connect(db_url) as conn:
        rejects = conn.execute(
            "SELECT reason, detail FROM rejected_messages ORDER BY id LIMIT 3"
        ).fetchall()
        hourly = conn.execute(
            "SELECT pm25_count, no2_count FROM agg_1h_air_sensor WHERE device_id = %s"
            " ORDER BY bucket LIMIT 1",
            (f"{device_prefix}air-1",),
        ).fetchone()
    assert rejects[0][0] == "schema_violation" and "history.csv:62" in rejects[0][1]
    assert hourly == (6, 6)  # the aggregates of those old hours were refreshed
    stats = json.loads(
        ok(cli(tmp_path, db_url, "query", "buckets", "--type", "air_sensor", "--metric", "pm25",
               "--since", "21d", "--step", "1d", "--format", "json")).splitlines()[0]
    )  # fmt: skip
    assert stats["count"] == 30 and stats["device_id"] == f"{device_prefix}air-1"  # 5 hours, 1 day
    pooled = json.loads(
        ok(cli(tmp_path, db_url, "query", "buckets", "--type", "air_sensor", "--metric", "pm25",
               "--since", "21d", "--step", "1d", "--pool", "district", "--format", "json"))
        .splitlines()[0]
    )  # fmt: skip
    assert (pooled["count"], pooled["devices"]) == (30, 1)
    assert not {"min", "max", "last"} & set(pooled)  # a pool shows no one's own reading


def test_backfill_a_simulated_month_then_query_it(tmp_path: Path, db_url: str) -> None:
    out = ok(
        cli(tmp_path, db_url, "backfill", "--simulate", "6h", "--devices", "12",
            "--interval", "15m", "--seed", "3")
    )  # fmt: skip
    assert "rows stored" in out
    with psycopg.connect(db_url) as conn:
        ((lamp, stored),) = conn.execute(
            "SELECT min(device_id), count(*) FROM readings_streetlight"
        ).fetchall()
    assert stored >= 6 * 4 - 2
    latest = ok(cli(tmp_path, db_url, "query", "latest", "--type", "streetlight",
                    "--device", lamp, "--format", "csv"))  # fmt: skip
    assert latest.splitlines()[0] == "time,device_id,service,district,metric,value"
    series = ok(cli(tmp_path, db_url, "query", "series", "--type", "streetlight", "--device",
                    lamp, "--metric", "power_w", "--since", "7h", "--points", "10"))  # fmt: skip
    assert 2 <= len(series.splitlines()) <= 11


def test_retention_commands_set_list_apply_and_refuse_nonsense(
    tmp_path: Path, db_url: str, store_backend: str
) -> None:
    assert "readings kept 400d" in ok(cli(tmp_path, db_url, "retention", "set", "water", "400d"))
    ok(cli(tmp_path, db_url, "retention", "set", "energy", "30d", "--aggregates", "1825d"))
    listed = ok(cli(tmp_path, db_url, "retention", "list", "--format", "csv"))
    assert listed.splitlines()[1:] == ["energy,30d,1825d", "water,400d,400d"]
    assert f"maintained ({store_backend})" in ok(cli(tmp_path, db_url, "maintain"))
    bad = cli(tmp_path, db_url, "retention", "set", "water", "forever")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "not a duration" in bad.stderr
    refused = cli(tmp_path, db_url, "retention", "set", "water", "30d", "--aggregates", "1d")
    assert refused.returncode == 1 and "less time" in refused.stderr
    assert "kept for ever" in ok(cli(tmp_path, db_url, "retention", "clear", "water"))


def test_mirror_once_then_status(
    tmp_path: Path, db_url: str, device_prefix: str, service_dir: Path
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        register(conn, city(device_prefix))
    write(db_url, readings(device_prefix, NOW - timedelta(hours=1), 30))
    assert "no mirror configured" in cli(tmp_path, db_url, "mirror", "--once").stderr
    with LocalVictoria(service_dir / "victoria") as victoria:
        influx = {"SILOBREAK_INFLUX_URL": victoria.url}
        sent = ok(cli(tmp_path, db_url, "mirror", "--once", **influx))
        assert sent.startswith("sent 35 reading row(s)")  # 5 rounds of 7 devices
        status = ok(cli(tmp_path, db_url, "mirror", "--status", **influx))
        assert "35 sent, 0 behind" in status
        assert len(victoria.export()) > 10
