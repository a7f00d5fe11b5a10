"""The database's readings volume fills up: ingest holds its messages, says why, and resumes."""

from __future__ import annotations

import errno
import os
import pwd
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from silobreak.local import LocalMosquitto, LocalPostgres
from store.migrate import migrate
from store.schema import READINGS_TABLES
from tests.e2e.harness import (
    IngestProcess,
    Publishing,
    fleet,
    message_count,
    messages,
    register,
    wait_for_messages,
    wait_until,
)
from tests.faults.checks import assert_stored_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

StartIngestor = Callable[..., IngestProcess]
# Room for the readings of the test before the filler takes the rest.
VOLUME_SIZE = "16m"
TABLESPACE = "readings_volume"


@pytest.fixture
def volume(service_dir: Path) -> Iterator[Path]:
    """A small tmpfs of the test's own, owned by postgres (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = service_dir / "volume"
    path.mkdir()
    user = pwd.getpwnam("postgres")
    options = f"size={VOLUME_SIZE},mode=0700,uid={user.pw_uid},gid={user.pw_gid}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        # Lazy: the server may still hold files open when a failed test gets here.
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def pg_with_readings_on(volume: Path, service_dir: Path) -> Iterator[LocalPostgres]:
    """A migrated PostgreSQL whose readings tables live in a tablespace on `volume`; the WAL
    and everything else stay on the main disk, as a separate data volume would be set up."""
    with LocalPostgres(service_dir / "pg") as pg:
        migrate(pg.url)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
                    sql.Identifier(TABLESPACE), sql.Literal(str(volume))
                )
            )
            for table in READINGS_TABLES.values():
                parts = conn.execute(
                    "SELECT inhrelid::regclass::text FROM pg_inherits"
                    " WHERE inhparent = %s::regclass",
                    [table.name],
                ).fetchall()
                # The parent's tablespace is where partitions made later go.
                for name in [table.name, *(p[0] for p in parts)]:
                    conn.execute(
                        sql.SQL("ALTER TABLE {} SET TABLESPACE {}").format(
                            sql.Identifier(name), sql.Identifier(TABLESPACE)
                        )
                    )
        yield pg


def fill(volume: Path) -> Path:
    """Write a file until the volume has no byte left."""
    filler = volume / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        while chunk := chunk[: len(chunk) // 2]:  # the last partial megabyte too
            try:
                out.write(chunk)
            except OSError:
                continue
    return filler


def test_a_full_database_volume_holds_ingest_until_space_returns(
    broker: LocalMosquitto,
    pg_with_readings_on: LocalPostgres,
    volume: Path,
    device_prefix: str,
    start_ingestor: StartIngestor,
) -> None:
    pg = pg_with_readings_on
    records = fleet(device_prefix, per_type=10)
    register(pg.url, records)
    items = messages(records, per_device=150)
    proc = start_ingestor(broker.url, pg.url)
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    wait_until(lambda: message_count(pg.url, device_prefix) >= 1000, 30, "a first thousand")
    filler = fill(volume)
    full_at = proc.wait_for_log("No space left on device", timeout=30)
    # One line says what and why: the reason from the database, and that nothing is acked.
    line = proc.lines[full_at]
    assert "could not extend file" in line
    assert "unacknowledged" in line
    held = message_count(pg.url, device_prefix)
    sender.join()  # the broker keeps what ingest does not acknowledge
    time.sleep(3)  # the fault lasts a few seconds more: ingest keeps retrying, stores nothing
    assert message_count(pg.url, device_prefix) == held < len(items)
    assert sum("No space left on device" in x for x in proc.lines) == 1  # said once, not per retry
    filler.unlink()
    proc.wait_for_log("store is back", timeout=30, start=full_at)
    wait_for_messages(pg.url, device_prefix, len(items))
    assert_stored_exactly_once(pg.url, device_prefix, items)
    assert proc.proc.poll() is None
