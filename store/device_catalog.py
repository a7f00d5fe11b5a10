"""The device catalog recorded in the database: what `migrate` wrote, what processes read."""

from __future__ import annotations

import logging
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from devices.catalog import SHIPPED, Catalog, DeviceType, activate, catalog_from_document
from devices.errors import CatalogError
from store.errors import MigrationError, StoreUnavailable, first_line

logger = logging.getLogger(__name__)

# The types of device catalog v1: a database migrated before the catalog was recorded in it
# holds exactly these.
V1_TYPES: Final = ("streetlight", "traffic_light", "air_sensor", "meter")


def recorded_catalog(conn: psycopg.Connection[Any]) -> Catalog | None:
    """The catalog `silobreak migrate` recorded, or None (not migrated, or before 0051)."""
    exists = conn.execute("SELECT to_regclass('device_catalog') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return None
    row = conn.execute("SELECT document FROM device_catalog").fetchone()
    if row is None:
        return None
    try:
        return catalog_from_document(row[0], source="the catalog recorded in the database")
    except CatalogError as exc:
        raise MigrationError(str(exc)) from None


def recorded_types(conn: psycopg.Connection[Any]) -> list[DeviceType] | None:
    """The device types the database has objects for; None for a fresh database."""
    catalog = recorded_catalog(conn)
    if catalog is not None:
        return list(catalog.types.values())
    migrated = conn.execute("SELECT 1 FROM schema_migrations WHERE version = 2").fetchone()
    if migrated is None:
        return None
    return [SHIPPED.types[name] for name in V1_TYPES]


def check_compatible(have: list[DeviceType], wanted: Catalog) -> None:
    """Refuse a catalog that drops a type the database has or changes how one is stored."""
    for old in have:
        new = wanted.types.get(old.name)
        if new is None:
            raise MigrationError(
                f"the catalog has no device type {old.name!r}, which this database stores:"
                " a type cannot be removed (does SILOBREAK_CATALOG name the file that added it?)"
            )
        if _storage(old) != _storage(new):
            raise MigrationError(
                f"device type {old.name!r}: its metrics (names, kinds, order, aggregation) or"
                " chunk interval differ from the ones this database stores; only new types"
                " can be added"
            )


def record_catalog(conn: psycopg.Connection[Any], catalog: Catalog) -> bool:
    """Record `catalog` (a new version when it differs); True when it changed."""
    row = conn.execute("SELECT version, document FROM device_catalog FOR UPDATE").fetchone()
    if row is not None and row[1] == catalog.document:
        return False
    version = 1 if row is None else int(row[0]) + 1
    conn.execute(
        "INSERT INTO device_catalog (id, version, document) VALUES (true, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version,"
        " document = EXCLUDED.document, updated_at = now()",
        (version, Jsonb(catalog.document)),
    )
    logger.info("device catalog version %d: %s", version, ", ".join(catalog.types))
    return True


async def catalog_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The recorded catalog's version (None: not migrated yet)."""
    exists = await (await conn.execute("SELECT to_regclass('device_catalog')")).fetchone()
    if exists is None or exists[0] is None:
        return None
    row = await (await conn.execute("SELECT version FROM device_catalog")).fetchone()
    return None if row is None else int(row[0])


async def adopt_recorded_catalog(conn: psycopg.AsyncConnection[Any]) -> None:
    """Make the database's catalog this process's, if it has one (a running process)."""
    exists = await (await conn.execute("SELECT to_regclass('device_catalog')")).fetchone()
    if exists is None or exists[0] is None:
        return
    row = await (await conn.execute("SELECT document FROM device_catalog")).fetchone()
    if row is not None:
        catalog = catalog_from_document(row[0], source="the catalog recorded in the database")
        activate(catalog)
        logger.info("device catalog reloaded: %s", ", ".join(catalog.types))


def activate_recorded(conninfo: str) -> Catalog:
    """Make the database's catalog this process's (at start-up of ingest or the streams API)."""
    try:
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
            catalog = recorded_catalog(conn)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(
            f"database unreachable, reading the device catalog: {first_line(exc)}"
        ) from exc
    if catalog is None:
        raise MigrationError("the database has no device catalog: run `silobreak migrate`")
    activate(catalog)
    logger.info("device catalog: %s", ", ".join(catalog.types))
    return catalog


def _storage(t: DeviceType) -> tuple[object, ...]:
    return (
        tuple((m.name, m.kind, m.aggregation) for m in t.metrics),
        t.chunk_interval,
    )
