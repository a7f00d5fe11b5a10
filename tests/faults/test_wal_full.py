"""The database's WAL volume fills up: PostgreSQL PANICs and stops; ingest holds its messages,
says why, keeps running, and resumes once the volume is grown and the database started again.

What PostgreSQL 15 does (measured here, and asserted below): the backend whose WAL write needs
a segment file the volume has no room for PANICs ("could not write to file
"pg_wal/xlogtemp.N": No space left on device"); the postmaster ends every session and starts
crash recovery; recovery replays to the end of the WAL and then preallocates the next
segment, which fails the same way (FATAL), and the postmaster shuts down: "shutting down due to
startup process failure". It stays down, and a start on the still-full volume fails the same
way: an operator must make room on the WAL volume first.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from silobreak.local import LocalMosquitto, LocalPostgres, LocalServiceError
from store.migrate import migrate
from tests.e2e.harness import (
    IngestProcess,
    Publishing,
    fleet,
    messages,
    register,
    wait_for_messages,
    wait_until,
)
from tests.faults.checks import assert_stored_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

StartIngestor = Callable[..., IngestProcess]
# Small segments, so the volume fills at a segment boundary within seconds of ingest load
# (about 0.55 MB of WAL a second at 2,000 messages/s here) rather than after up to 16 MB.
SEGMENT_MB = 1
# Room for initdb and the migrations; shrunk to the WAL in use plus one segment before ingest.
SETUP_SIZE_MB = 64
HEADROOM_MB = 1
# What the operator grows the volume to.
GROWN_SIZE_MB = 64
# Nothing checkpoints during the test (max_wal_size stays 1 GB, far beyond the volume: the
# misconfiguration that fills a WAL volume, as archiving that fails or a stale replication
# slot would); old segments are removed rather than recycled into preallocated future ones.
WAL_SETTINGS = {"wal_recycle": "off", "min_wal_size": f"{2 * SEGMENT_MB}MB"}
# The fault lasts this long after PostgreSQL stopped: ingest retries and stores nothing.
OUTAGE_S = 3.0


def _mount(path: Path, options: str) -> None:
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"this test needs a tmpfs of its own for the WAL and could not mount one "
            f"(exit {result.returncode}): {result.stderr.strip()}; run it as root"
        )


def _resize(path: Path, size_mb: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(path)], check=True)


def _used_mb(path: Path) -> float:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20


@pytest.fixture
def wal_volume(service_dir: Path) -> Iterator[Path]:
    """A tmpfs of the test's own for pg_wal, owned by postgres. Mounting needs root: without
    it the test fails (it is not skipped), saying so."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs for the WAL, which needs root; run it as root")
    path = service_dir / "wal"
    path.mkdir()
    user = pwd.getpwnam("postgres")
    _mount(path, f"size={SETUP_SIZE_MB}m,mode=0700,uid={user.pw_uid},gid={user.pw_gid}")
    try:
        yield path
    finally:
        # Lazy: the server may still hold files open when a failed test gets here.
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def pg_with_wal_on(wal_volume: Path, service_dir: Path) -> Iterator[LocalPostgres]:
    """A migrated PostgreSQL whose pg_wal is `wal_volume`, holding only the current segment."""
    with LocalPostgres(service_dir / "pg", waldir=wal_volume, wal_segment_mb=SEGMENT_MB) as pg:
        migrate(pg.url)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            for name, value in WAL_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
            wait_until(
                lambda: conn.execute("SHOW wal_recycle").fetchone() == ("off",),
                10,
                "the WAL settings to apply",
            )
            # initdb leaves segments preallocated ahead of the current one: switch through
            # them, then a checkpoint removes every one behind the current.
            conn.execute("CREATE TABLE wal_test_marker (v int)")
            while True:
                current = conn.execute(
                    "SELECT pg_walfile_name(pg_current_wal_insert_lsn())"
                ).fetchone()
                ahead = max(f.name for f in wal_volume.iterdir() if len(f.name) == 24)
                if current is not None and current[0] >= ahead:
                    break
                conn.execute("INSERT INTO wal_test_marker VALUES (1)")
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
        yield pg


def test_a_full_wal_volume_stops_postgres_and_ingest_resumes_after_it_is_grown(
    broker: LocalMosquitto,
    pg_with_wal_on: LocalPostgres,
    wal_volume: Path,
    device_prefix: str,
    start_ingestor: StartIngestor,
) -> None:
    pg = pg_with_wal_on
    records = fleet(device_prefix, per_type=10)
    register(pg.url, records)
    items = messages(records, per_device=600)  # 24,000 messages, 12 s at 2,000/s
    in_use = _used_mb(wal_volume)
    size_mb = int(in_use) + HEADROOM_MB
    _resize(wal_volume, size_mb)
    timeline: list[str] = []
    started = time.monotonic()

    def note(event: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.2f}s  {event}")

    note(f"WAL volume {size_mb} MiB, {in_use:.1f} MiB in use (segments of {SEGMENT_MB} MiB)")
    proc = start_ingestor(broker.url, pg.url)
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    note("publishing 24,000 messages at 2,000/s")
    try:
        wait_until(lambda: "PANIC" in _log(pg), 60, "PostgreSQL to PANIC on the full WAL volume")
        note(f"PostgreSQL: {_first(pg, 'PANIC')}")
        wait_until(lambda: not pg.is_running(), 30, "PostgreSQL to stop")
        stopped = time.monotonic()
        note(f"PostgreSQL: {_first(pg, 'startup process failure')}")
        failed_at = proc.wait_for_log("unacknowledged", timeout=30)
        line = proc.lines[failed_at]
        note(f"ingest: {line}")
        # The ingestor's one line: the database's reason, and that it holds the messages.
        # It relays what its own connection was told: the PANIC when its commit was the
        # write that found no room (every run here), else the end of its session.
        assert "database unavailable" in line
        assert "No space left on device" in line or "crash of another server process" in line
        acked = proc.metric("silobreak_ingest_received_total")
        note(f"ingest had committed and acknowledged {acked:.0f} messages")

        # The operator starts it again without making room: recovery fails the same way.
        with pytest.raises(LocalServiceError, match="No space left on device"):
            pg.start()
        note("a start on the full volume is refused: No space left on device")

        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
        assert proc.proc.poll() is None  # ingest keeps running, retrying
        assert proc.health()[0] == 503
        assert proc.metric("silobreak_ingest_received_total") == acked  # nothing acknowledged
        # Said once per outage, not per retry. The first "No space left" may be an ERROR
        # that a later commit gets past (TimescaleDB's background workers write WAL too)
        # before the PANIC: then ingest says the store is back, and the outage after it is
        # a second one.
        outages = 1 + sum("store is back" in x for x in proc.lines)
        assert sum("unacknowledged" in x for x in proc.lines) == outages
        note(f"ingest alive, /healthz 503, publisher has {sender.acked} acknowledged by the broker")

        _resize(wal_volume, GROWN_SIZE_MB)
        pg.start()
        note(f"volume grown to {GROWN_SIZE_MB} MiB, PostgreSQL started (crash recovery)")
        back = proc.wait_for_log("store is back", timeout=30, start=failed_at)
        note(f"ingest: {proc.lines[back]}")
        sender.join()
        note("publisher done")
        wait_for_messages(pg.url, device_prefix, len(items))
        note(f"all {len(items)} stored")
    finally:
        print("\n".join(["timeline:", *timeline]))
    assert_stored_exactly_once(pg.url, device_prefix, items)
    assert proc.proc.poll() is None


def _log(pg: LocalPostgres) -> str:
    return pg.log_file.read_text(encoding="utf-8", errors="replace")


def _first(pg: LocalPostgres, text: str) -> str:
    """The message of the first server log line holding `text`, without its prefix."""
    line = next(x for x in _log(pg).splitlines() if text in x)
    return line.split("] ", 1)[-1]
