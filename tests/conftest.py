"""Shared fixtures: one real PostgreSQL and Mosquitto per session, a fresh database per test."""

from __future__ import annotations

import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from silobreak.local import LocalMosquitto, LocalPostgres

if TYPE_CHECKING:
    from store.migrate import Backend, BackendChoice

TEMPLATE_DB = "silobreak_template"
PLAIN_TEMPLATE_DB = "silobreak_template_plain"
# The backend each template was migrated to, recorded while it still takes connections.
_template_backends: dict[str, Backend] = {}


def pytest_configure(config: pytest.Config) -> None:
    # `timeout`, CI cancellation and `kill` send SIGTERM, which ends pytest without teardown
    # and leaves the session's PostgreSQL and Mosquitto running: make it an interrupt.
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def services_root() -> Iterator[Path]:
    """A directory for server data that the `postgres` user can reach when we are root.

    pytest's own tmp dirs sit under a 0700 /tmp/pytest-of-root, closed to that user.
    """
    root = Path(tempfile.mkdtemp(prefix="silobreak-test-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


@pytest.fixture
def service_dir(services_root: Path) -> Path:
    """A fresh directory for a test that runs servers of its own (fault and restart tests)."""
    path = services_root / f"t{uuid.uuid4().hex[:8]}"
    path.mkdir()
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def pg_server(services_root: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres(services_root / "postgres")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mqtt_broker(services_root: Path) -> Iterator[LocalMosquitto]:
    broker = LocalMosquitto(services_root / "mosquitto")
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: LocalPostgres) -> str:
    """The migrated template every test database is copied from; migrated once a session.

    Its backend is `auto`: TimescaleDB when the session's PostgreSQL has the extension
    preloaded (see docs/timescale-testing.md), plain otherwise.
    """
    _make_template(pg_server, TEMPLATE_DB, "auto")
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def store_backend(pg_server: LocalPostgres, template_db: str) -> Backend:
    """The backend of `db_url`'s databases: "timescale" or "plain"."""
    return _template_backends[template_db]


@pytest.fixture(scope="session")
def plain_template_db(pg_server: LocalPostgres, template_db: str, store_backend: Backend) -> str:
    """A template migrated for the plain backend: `template_db` itself unless that is
    TimescaleDB (then a second template, migrated with backend="plain")."""
    if store_backend == "plain":
        return template_db
    _make_template(pg_server, PLAIN_TEMPLATE_DB, "plain")
    return PLAIN_TEMPLATE_DB


@pytest.fixture
def db_url(pg_server: LocalPostgres, template_db: str) -> Iterator[str]:
    """A libpq URL of a fresh, migrated database of this test's own, dropped after it."""
    yield from _database_from(pg_server, template_db)


@pytest.fixture
def plain_db_url(pg_server: LocalPostgres, plain_template_db: str) -> Iterator[str]:
    """Like `db_url`, always of the plain backend: for tests of the plain backend's own
    machinery (rollup tables, partitions), which a TimescaleDB server runs as well."""
    yield from _database_from(pg_server, plain_template_db)


def _make_template(pg_server: LocalPostgres, name: str, backend: BackendChoice) -> None:
    from store.migrate import migrate, store_backend  # noqa: PLC0415 - only database tests

    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate(pg_server.url_for(name), backend=backend)
    with psycopg.connect(pg_server.url_for(name), autocommit=True) as conn:
        _template_backends[name] = store_backend(conn)
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template: end
        # connections migrate() left open and refuse new ones.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )


def _database_from(pg_server: LocalPostgres, template: str) -> Iterator[str]:
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    name = sql.Identifier(dbname)
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(name, sql.Identifier(template))
        )
    try:
        yield pg_server.url_for(dbname)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))


@pytest.fixture
def empty_db_url(pg_server: LocalPostgres) -> Iterator[str]:
    """A libpq URL of an empty database of this test's own (not migrated), dropped after it."""
    dbname = f"e_{uuid.uuid4().hex[:12]}"
    name = sql.Identifier(dbname)
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    try:
        yield pg_server.url_for(dbname)
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))


@pytest.fixture
def device_prefix() -> str:
    """A prefix unique to this test, for device ids and client ids (`t1a2b3c4d-`)."""
    return f"t{uuid.uuid4().hex[:8]}-"
