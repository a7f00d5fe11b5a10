"""Versioned, idempotent schema migrations for the plain-PostgreSQL and TimescaleDB backends."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

import psycopg

from store.errors import MigrationError, StoreUnavailable, first_line

logger = logging.getLogger(__name__)

Backend = Literal["plain", "timescale"]
BackendChoice = Literal["auto", "plain", "timescale"]

_FILE_RE: Final = re.compile(
    r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<backend>plain|timescale))?\.sql"
)
# Any constant works; it only has to be the same for every migrator of this schema.
_LOCK_KEY: Final = 0x51_10_B2_EA


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations_for(backend: Backend) -> list[Migration]:
    """Every migration that applies to `backend`, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("store.migrations").iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if match is None or match["backend"] not in (None, backend):
            continue
        version = int(match["version"])
        if version in found:
            raise MigrationError(f"two migrations numbered {version:04d} for {backend}")
        found[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def migrate(conninfo: str, *, backend: BackendChoice = "auto") -> list[str]:
    """Apply the pending migrations; returns the names applied (empty when up to date)."""
    try:
        conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"database {_safe(conninfo)}: {first_line(exc)}") from exc
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            chosen = _settle_backend(conn, backend)
            return _apply(conn, chosen)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def store_backend(conn: psycopg.Connection[Any]) -> Backend:
    """The backend a migrated database was set up with."""
    row = conn.execute("SELECT value FROM store_settings WHERE key = 'backend'").fetchone()
    if row is None:
        raise MigrationError("database is not migrated: run `silobreak migrate`")
    value = str(row[0])
    if value not in ("plain", "timescale"):
        raise MigrationError(f"unknown store backend {value!r} in store_settings")
    return value  # type: ignore[return-value]


def _settle_backend(conn: psycopg.Connection[Any], wanted: BackendChoice) -> Backend:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS store_settings (key text PRIMARY KEY, value text NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
        " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    row = conn.execute("SELECT value FROM store_settings WHERE key = 'backend'").fetchone()
    if row is not None:
        current: Backend = "timescale" if row[0] == "timescale" else "plain"
        if wanted not in ("auto", current):
            raise MigrationError(
                f"database was set up for the {current} backend; cannot switch to {wanted}"
            )
        return current
    has_timescale = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
    ).fetchone()
    available = bool(has_timescale and has_timescale[0])
    if wanted == "timescale" and not available:
        raise MigrationError("backend timescale asked for, but the timescaledb extension is absent")
    chosen: Backend = (
        "timescale" if wanted == "timescale" or (wanted == "auto" and available) else "plain"
    )
    if chosen == "timescale":
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    conn.execute("INSERT INTO store_settings VALUES ('backend', %s)", (chosen,))
    logger.info("store backend: %s", chosen)
    return chosen


def _apply(conn: psycopg.Connection[Any], backend: Backend) -> list[str]:
    done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    applied: list[str] = []
    for m in migrations_for(backend):
        if m.version in done:
            continue
        label = f"{m.version:04d}_{m.name}"
        try:
            with conn.transaction():
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )
        except psycopg.Error as exc:
            raise MigrationError(f"migration {label} failed: {first_line(exc)}") from exc
        logger.info("applied migration %s", label)
        applied.append(label)
    return applied


def _safe(conninfo: str) -> str:
    """The connection string without its password, for messages."""
    return re.sub(
        r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", conninfo)
    )
