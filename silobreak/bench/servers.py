"""The servers a benchmark runs against: a PostgreSQL (and a Mosquitto) of its own."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from silobreak.local import LocalMosquitto, LocalPostgres
from store.migrate import BackendChoice, migrate


@contextmanager
def bench_database(
    prefix: str, *, commit_timestamps: bool = False, backend: BackendChoice = "auto"
) -> Iterator[str]:
    """A fresh PostgreSQL with a database `bench` migrated for `backend`; its URL.

    `commit_timestamps` turns on `track_commit_timestamp`, so a row's commit time can be read
    (`pg_xact_commit_timestamp`): latencies are measured from it.
    """
    with _folder(prefix) as root, _database(root, commit_timestamps, backend) as db_url:
        yield db_url


@contextmanager
def bench_servers(
    prefix: str, *, broker_config: str = "", commit_timestamps: bool = False
) -> Iterator[tuple[LocalMosquitto, str]]:
    """`bench_database` and a Mosquitto (with `broker_config` added to its configuration)."""
    with (
        _folder(prefix) as root,
        _database(root, commit_timestamps, "auto") as db_url,
        LocalMosquitto(root / "mqtt", extra_config=broker_config) as broker,
    ):
        yield broker, db_url


@contextmanager
def _folder(prefix: str) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix=f"silobreak-{prefix}-"))
    root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def _database(root: Path, commit_timestamps: bool, backend: BackendChoice) -> Iterator[str]:
    with LocalPostgres(root / "pg") as pg:
        if commit_timestamps:
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
            pg.restart()
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        db_url = pg.url_for("bench")
        migrate(db_url, backend=backend)
        yield db_url
