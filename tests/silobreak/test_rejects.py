"""Dead letters against a real PostgreSQL: counted, replayed after a fix, expired."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devices.registry import RegistrySnapshot, new_record
from ingest.decode import STORE_REFUSED, Rejected, Window, decode
from silobreak.replay import ReplayLimits, replay_rejects
from store.errors import StoreError
from store.registry import upsert_devices
from store.rejects import RejectFilter
from store.writer import InsertMode, ReadingsWriter, RejectRow

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
# The command line as the `silobreak` console script runs it.
_CLI = "from silobreak.cli import main; main(prog_name='silobreak')"


def silobreak(tmp_path: Path, db_url: str, *args: str, **env: str) -> str:
    result = run_silobreak(tmp_path, db_url, *args, **env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def still_failing(tmp_path: Path, db_url: str, *args: str) -> str:
    """Run a replay that leaves dead letters failing: exit 1, and one line saying how many."""
    result = run_silobreak(tmp_path, db_url, "rejects", "replay", *args)
    assert result.returncode == 1, result.stderr
    failing = int(result.stdout.split(" still failing")[0].rsplit(", ", 1)[1])
    assert failing > 0
    said = (
        f"Error: {failing} replayed dead letter(s) still fail; they stay, with the reason they"
        " fail for now (`silobreak rejects stats --by reason`)"
    )
    assert result.stderr.strip().splitlines()[-1] == said
    assert "Traceback" not in result.stderr
    return result.stdout


def run_silobreak(
    tmp_path: Path, db_url: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    return subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        env={**clean, "SILOBREAK_DATABASE_URL": db_url, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dead_letter(db_url: str, device_id: str, body: dict[str, Any], received_at: datetime) -> str:
    """Dead-letter one message as ingest does, judged with an empty registry; returns its reason."""
    topic = f"devices/{device_id}/telemetry"
    payload = json.dumps(body).encode()
    window = Window.at(received_at, max_age=timedelta(days=7), max_future=timedelta(minutes=5))
    result = decode(topic, payload, RegistrySnapshot(()), window, max_payload=65536)
    assert isinstance(result, Rejected)
    reject = RejectRow(received_at, topic, device_id, result.reason, result.detail, payload)
    write(db_url, {}, [reject])
    return result.reason


def write(
    db_url: str, rows: dict[str, list[tuple[Any, ...]]], rejects: list[RejectRow], **kw: Any
) -> None:
    async def go() -> None:
        writer = ReadingsWriter(db_url)
        try:
            await writer.write(rows, rejects, **kw)
        finally:
            await writer.close()

    asyncio.run(go())


def query(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()


def register(db_url: str, *records: Any) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_devices(conn, records)


def test_rejects_stats_counts_by_reason_and_device(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    a, b = f"{device_prefix}a", f"{device_prefix}b"
    for device, n in ((a, 3), (b, 1)):
        for i in range(n):
            dead_letter(db_url, device, {"metrics": {"pm25": i}}, NOW - timedelta(minutes=i))
    register(db_url, new_record(b, "air_sensor"))
    out = silobreak(tmp_path, db_url, "rejects", "stats", "--format", "json")
    counts = [json.loads(line) for line in out.splitlines()]
    assert [(c["reason"], c["device_id"], c["count"]) for c in counts] == [
        ("unknown_device", a, 3),
        ("unknown_device", b, 1),
    ]
    assert counts[0]["first_received"] < counts[0]["last_received"]
    by_reason = silobreak(tmp_path, db_url, "rejects", "stats", "--by", "reason", "--device", a)
    assert by_reason.splitlines()[1].split()[:2] == ["unknown_device", "3"]


def test_replay_stores_a_late_registered_devices_messages_and_settles_them(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    late, ghost = f"{device_prefix}late", f"{device_prefix}ghost"
    # Received 8 days ago: inside the window as of arrival, outside it as of today.
    received = NOW - timedelta(days=8)
    good = [
        {"ts": (received - timedelta(seconds=s)).isoformat(), "metrics": {"pm25": float(s)}}
        for s in range(3)
    ]
    for body in good:
        dead_letter(db_url, late, body, received)
    # Also fails once its device is known: it stays, with the reason it fails for now.
    dead_letter(db_url, late, {"ts": received.isoformat(), "metrics": {"pm25": 1e9}}, received)
    dead_letter(db_url, ghost, {"metrics": {"pm25": 1.0}}, NOW)
    write(db_url, {}, [RejectRow(NOW, f"devices/{late}/status", late, "unknown_device", "", b"{}")])
    register(db_url, new_record(late, "air_sensor"))

    out = still_failing(tmp_path, db_url)
    assert "3 stored, 2 still failing (1 schema_violation, 1 unknown_device)" in out
    assert "1 skipped" in out
    stored = query(
        db_url,
        "SELECT time, value, service FROM readings WHERE device_id = %s AND metric = 'pm25'"
        " ORDER BY time",
        late,
    )
    assert stored == [(received - timedelta(seconds=s), float(s), "environment") for s in (2, 1, 0)]
    left = query(
        db_url,
        "SELECT device_id, reason, topic FROM rejected_messages WHERE device_id LIKE %s"
        " ORDER BY id",
        device_prefix + "%",
    )
    assert left == [
        (late, "schema_violation", f"devices/{late}/telemetry"),
        (ghost, "unknown_device", f"devices/{ghost}/telemetry"),
        (late, "unknown_device", f"devices/{late}/status"),
    ]
    # Nothing left to store: a second replay changes nothing.
    assert "0 stored, 2 still failing" in still_failing(tmp_path, db_url)


def test_replay_takes_only_what_its_filters_select(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    one, two = f"{device_prefix}one", f"{device_prefix}two"
    dead_letter(db_url, one, {"metrics": {"pm25": 1.0}}, NOW - timedelta(hours=3))
    dead_letter(db_url, one, {"metrics": {"pm25": 2.0}}, NOW - timedelta(minutes=5))
    dead_letter(db_url, two, {"metrics": {"pm25": 3.0}}, NOW - timedelta(minutes=5))
    register(db_url, new_record(one, "air_sensor"), new_record(two, "air_sensor"))
    out = silobreak(tmp_path, db_url, "rejects", "replay", "--device", one, "--since", "1h")
    assert "replayed 1 dead letter(s): 1 stored" in out
    values = query(
        db_url, "SELECT device_id, value FROM readings WHERE device_id LIKE %s", device_prefix + "%"
    )
    assert values == [(one, 2.0)]
    out = silobreak(tmp_path, db_url, "rejects", "replay", "--reason", "unknown_device")
    assert "replayed 2 dead letter(s): 2 stored" in out


def test_a_replayed_batch_that_fails_keeps_its_dead_letters(
    db_url: str, device_prefix: str
) -> None:
    device = f"{device_prefix}x"
    dead_letter(db_url, device, {"metrics": {"pm25": 1.0}}, NOW)
    (reject_id,) = query(db_url, "SELECT id FROM rejected_messages WHERE device_id = %s", device)
    bad_row = (NOW, "bad\x00id", "environment", 1.0, None, None, None, None, None)
    with pytest.raises(StoreError):
        write(db_url, {"air_sensor": [bad_row]}, [], replayed=[reject_id[0]])
    assert query(db_url, "SELECT id FROM rejected_messages WHERE device_id = %s", device) == [
        reject_id
    ]


# A value an operator's CHECK refuses (the decoder takes it), as in tests/faults.
SENTINEL = 1234.5
# Each refused message's dead letter as ingest left it: the database's error then.
REFUSED_THEN = (
    'new row for relation "readings_air_sensor_p1" violates check constraint'
    ' "pm25_calibration" (SQLSTATE 23514)'
)


def refused_dead_letters(
    db_url: str, device: str, values: list[float], received: datetime, *, late: set[int]
) -> list[int]:
    """One air sensor message per value, dead-lettered `store_refused` as ingest does (but
    those at the indices in `late`: `unknown_device`, the device not yet registered then);
    returns their ids, in order."""
    topic = f"devices/{device}/telemetry"
    letters = []
    for i, value in enumerate(values):
        ts = (received - timedelta(seconds=len(values) - i)).isoformat()
        payload = json.dumps({"ts": ts, "metrics": {"pm25": value}}).encode()
        reason, detail = (
            ("unknown_device", "device not registered") if i in late
            else (STORE_REFUSED, REFUSED_THEN)
        )  # fmt: skip
        letters.append(RejectRow(received, topic, device, reason, detail, payload))
    write(db_url, {}, letters)
    rows = query(
        db_url, "SELECT id FROM rejected_messages WHERE device_id = %s ORDER BY id", device
    )
    return [r[0] for r in rows]


def refuse_sentinel(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE readings_air_sensor ADD CONSTRAINT pm25_sentinel"
            f" CHECK (pm25 <> {SENTINEL})"
        )


def dead_letters_of(db_url: str, device: str) -> list[tuple[Any, ...]]:
    return query(
        db_url,
        "SELECT id, received_at, reason, detail FROM rejected_messages WHERE device_id = %s"
        " ORDER BY id",
        device,
    )


def test_replay_stores_what_the_database_takes_and_keeps_what_it_still_refuses(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    device = f"{device_prefix}air"
    received = NOW - timedelta(hours=1)
    refused_at = {3, 11, 17}
    values = [SENTINEL if i in refused_at else float(i) for i in range(20)]
    ids = refused_dead_letters(db_url, device, values, received, late={0, 11})
    register(db_url, new_record(device, "air_sensor"))
    # The constraint behind the dead letters is fixed; another, still in place, refuses some.
    refuse_sentinel(db_url)

    out = still_failing(tmp_path, db_url, "--device", device)
    line = out.strip().splitlines()[-1]
    assert line.startswith(
        "replayed 20 dead letter(s): 17 stored, 3 still failing (3 store_refused; "
    )
    parts = int(line.split("; ")[1].split()[0])
    assert 0 < parts <= 2 * len(refused_at) * math.ceil(math.log2(len(values)))
    stored = query(
        db_url,
        "SELECT value FROM readings WHERE device_id = %s AND metric = 'pm25' ORDER BY time",
        device,
    )
    assert stored == [(v,) for i, v in enumerate(values) if i not in refused_at]
    # The refused keep their dead letters, ids and arrival times: with the database's error of
    # now, and as store_refused also the one that was an unknown device's when it came.
    left = dead_letters_of(db_url, device)
    assert [(i, t, r) for i, t, r, _ in left] == [
        (ids[i], received, STORE_REFUSED) for i in sorted(refused_at)
    ]
    for *_, detail in left:
        assert 'violates check constraint "pm25_sentinel"' in detail
        assert detail.endswith("(SQLSTATE 23514)")

    # Refused again, and left as they are.
    again = still_failing(tmp_path, db_url, "--reason", STORE_REFUSED)
    assert "replayed 3 dead letter(s): 0 stored, 3 still failing (3 store_refused; " in again
    assert dead_letters_of(db_url, device) == left
    # Once the database takes them, they are stored and settled.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE readings_air_sensor DROP CONSTRAINT pm25_sentinel")
    done = silobreak(tmp_path, db_url, "rejects", "replay", "--reason", STORE_REFUSED)
    assert "replayed 3 dead letter(s): 3 stored, 0 still failing" in done
    assert dead_letters_of(db_url, device) == []
    count = query(db_url, "SELECT count(*) FROM readings WHERE device_id = %s", device)
    assert count == [(20,)]


@pytest.mark.parametrize("insert_mode", ["copy", "unnest"])
def test_replay_sets_aside_the_refused_page_by_page(
    db_url: str, device_prefix: str, insert_mode: InsertMode
) -> None:
    device = f"{device_prefix}air"
    received = NOW - timedelta(hours=1)
    # Pages of 8: one with a refused message, one with none, one all refused, one with one.
    refused_at = {2, 16, 17, 18, 19, 20, 21, 22, 23, 24}
    values = [SENTINEL if i in refused_at else float(i) for i in range(25)]
    ids = refused_dead_letters(db_url, device, values, received, late=set())
    register(db_url, new_record(device, "air_sensor"))
    refuse_sentinel(db_url)

    result = asyncio.run(
        replay_rejects(
            db_url, RejectFilter(device=device), limits=ReplayLimits(), batch_size=8,
            insert_mode=insert_mode,
        )
    )  # fmt: skip
    assert (result.examined, result.stored) == (25, 15)
    assert result.still_failing == {STORE_REFUSED: 10}
    left = dead_letters_of(db_url, device)
    assert [r[0] for r in left] == [ids[i] for i in sorted(refused_at)]
    stored = query(db_url, "SELECT pm25 FROM readings_air_sensor WHERE device_id = %s", device)
    assert sorted(r[0] for r in stored) == [v for i, v in enumerate(values) if i not in refused_at]


def test_rejects_expire_deletes_those_past_retention(
    tmp_path: Path, db_url: str, device_prefix: str
) -> None:
    device = f"{device_prefix}old"
    for age in (timedelta(days=40), timedelta(days=31), timedelta(days=2)):
        dead_letter(db_url, device, {"metrics": {"pm25": 1.0}}, NOW - age)

    def left() -> int:
        rows = query(db_url, "SELECT count(*) FROM rejected_messages WHERE device_id = %s", device)
        return int(rows[0][0])

    assert "deleted 2 dead letter(s)" in silobreak(tmp_path, db_url, "rejects", "expire")
    assert left() == 1
    out = silobreak(tmp_path, db_url, "rejects", "expire", SILOBREAK_REJECTS_RETENTION="1d")
    assert "deleted 1 dead letter(s)" in out
    assert left() == 0
