"""Versioned, idempotent schema migrations for the plain-PostgreSQL and TimescaleDB backends."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal

import psycopg

from devices.catalog import Catalog, DeviceType, active
from store import ddl
from store.device_catalog import check_compatible, record_catalog, recorded_types
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


def migrations_for(backend: Backend, types: Sequence[DeviceType] | None = None) -> list[Migration]:
    """Every migration that applies to `backend`, in version order, its per-type parts
    generated for `types` (the active catalog's by default)."""
    types = list(active().types.values()) if types is None else types
    found: dict[int, Migration] = {}
    for entry in resources.files("store.migrations").iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if match is None or match["backend"] not in (None, backend):
            continue
        version = int(match["version"])
        if version in found:
            raise MigrationError(f"two migrations numbered {version:04d} for {backend}")
        text = ddl.render(entry.read_text(encoding="utf-8"), types, backend)
        found[version] = Migration(version, match["name"], text)
    return [found[v] for v in sorted(found)]


def migrate(
    conninfo: str,
    *,
    backend: BackendChoice = "auto",
    catalog: Catalog | None = None,
    until: int | None = None,
) -> list[str]:
    """Apply the pending migrations, then create what the catalog's new device types need and
    record the catalog; returns what was applied (empty when up to date).

    `catalog` is the active one by default (the shipped catalog and SILOBREAK_CATALOG's types).
    `until` stops after that migration version (a database as an older release left it, to
    test the migrations that follow on it).
    """
    wanted = active() if catalog is None else catalog
    try:
        conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"database {_safe(conninfo)}: {first_line(exc)}") from exc
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            chosen = _settle_backend(conn, backend)
            have = recorded_types(conn)
            if have is not None:
                check_compatible(have, wanted)
            types = list(wanted.types.values()) if have is None else have
            applied = _apply(conn, chosen, types, until)
            if until is not None:
                # Its tables were made for `types`: recorded, as that release would have.
                table = conn.execute("SELECT to_regclass('device_catalog')").fetchone()
                if have is None and table is not None and table[0] is not None:
                    record_catalog(conn, wanted)
                return applied
            added = _add_types(conn, chosen, types, wanted)
            # A fresh database records its first catalog: nothing to say beyond the migrations.
            return applied + added if not applied or have is not None else applied
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


def _apply(
    conn: psycopg.Connection[Any],
    backend: Backend,
    types: Sequence[DeviceType],
    until: int | None = None,
) -> list[str]:
    done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
    applied: list[str] = []
    for m in migrations_for(backend, types):
        if m.version in done or (until is not None and m.version > until):
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


def _add_types(
    conn: psycopg.Connection[Any],
    backend: Backend,
    have: Sequence[DeviceType],
    wanted: Catalog,
) -> list[str]:
    """Create the new types' objects and record the catalog, in one transaction."""
    new = [name for name in wanted.types if name not in {t.name for t in have}]
    try:
        with conn.transaction():
            # A store that pools from a ledger (pooled_buckets) has no per-type pool views.
            ledger = conn.execute("SELECT to_regclass('pooled_buckets') IS NOT NULL").fetchone()
            script = ddl.added_types(
                have,
                list(wanted.types.values()),
                backend,
                district_views=not (ledger and ledger[0]),
            )
            if script:
                conn.execute(script.encode())
            changed = record_catalog(conn, wanted)
    except psycopg.Error as exc:
        raise MigrationError(
            f"adding device types {', '.join(new)} failed: {first_line(exc)}"
        ) from exc
    for name in new:
        logger.info("added device type %s", name)
    if not changed:
        return []
    return [f"device type {name}" for name in new] or ["device catalog"]


def _safe(conninfo: str) -> str:
    """The connection string without its password, for messages."""
    return re.sub(
        r"(://[^:/@]+:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", conninfo)
    )
