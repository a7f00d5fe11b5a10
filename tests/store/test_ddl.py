"""The per-type SQL generated from the catalog: v1's schema exactly, and types added later."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devices.catalog import SHIPPED, activated, catalog_from_document
from devices.registry import new_record
from store import ddl
from store.device_catalog import V1_TYPES
from store.errors import MigrationError
from store.migrate import Backend, migrate, migrations_for
from store.registry import upsert_devices
from store.sql_roles import ensure_roles
from tests.store.store_helpers import NOW, refresh_aggregates, write

# The per-type migrations as they were written by hand for device catalog v1.
V1_DIR = Path(__file__).parent / "ddl_v1"
V1 = [SHIPPED.types[name] for name in V1_TYPES]
MIGRATIONS = Path(__file__).parents[2] / "store" / "migrations"


def _without_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


@pytest.mark.parametrize("v1_file", sorted(p.name for p in V1_DIR.glob("*.sql")))
def test_generated_sql_for_the_v1_types_is_the_hand_written_v1_sql(v1_file: str) -> None:
    backend: Backend = "timescale" if ".timescale." in v1_file else "plain"
    template = (MIGRATIONS / v1_file).read_text(encoding="utf-8")
    want = (V1_DIR / v1_file).read_text(encoding="utf-8")
    # Every generated section is in the v1 file verbatim, and the whole file is the same SQL
    # (the templates' own comments may have been reworded since).
    sections = re.findall(r"\{\{([a-z_]+)\}\}", template)
    assert sections
    for name in sections:
        assert ddl.SECTIONS[name](V1, backend) in want, name
    assert _without_comments(ddl.render(template, V1, backend)) == _without_comments(want)


def test_migrating_again_changes_nothing_and_the_catalog_is_recorded(db_url: str) -> None:
    assert migrate(db_url) == []
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT version, document FROM device_catalog").fetchone()
    assert row is not None
    assert row[0] == 1
    assert catalog_from_document(row[1]).types == SHIPPED.types


def test_a_v1_database_gains_the_new_types_and_then_has_a_fresh_databases_schema(
    empty_db_url: str, plain_db_url: str
) -> None:
    _migrate_as_v1(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        before = _schema(conn)["tables"]
    assert "public.readings_meter" in before
    assert "public.readings_noise_sensor" not in before
    applied = migrate(empty_db_url)
    assert applied == [
        "0051_device_catalog",
        "0052_job_status",
        "0060_organisations",
        "0061_regional_pools",
        "0062_flows",
        "device type noise_sensor",
        "device type parking_bay",
    ]
    assert migrate(empty_db_url) == []
    with psycopg.connect(empty_db_url) as upgraded, psycopg.connect(plain_db_url) as fresh:
        got, want = _schema(upgraded), _schema(fresh)
    for part in want:
        assert got[part] == want[part], part


def test_a_catalog_that_drops_a_type_or_changes_its_metrics_is_refused(db_url: str) -> None:
    doc = dict(SHIPPED.document)
    fewer = catalog_from_document({"types": doc["types"][:-1]})
    with pytest.raises(MigrationError, match="no device type 'parking_bay'"):
        migrate(db_url, catalog=fewer)
    types = [dict(t) for t in doc["types"]]
    types[-1] = {**types[-1], "metrics": [{"name": "free", "kind": "bool", "description": "x"}]}
    with pytest.raises(MigrationError, match="'parking_bay': its metrics"):
        migrate(db_url, catalog=catalog_from_document({"types": types}))


def _migrate_as_v1(url: str) -> None:
    """Apply the migrations as they were before the catalog became data (plain backend)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE store_settings (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO store_settings VALUES ('backend', 'plain')")
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in migrations_for("plain", V1):
            if m.version >= 51:
                break
            by_hand = [V1_DIR / f"{m.version:04d}_{m.name}{ext}" for ext in (".sql", ".plain.sql")]
            text = next((p.read_text() for p in by_hand if p.exists()), m.sql)
            conn.execute(text.encode())
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (m.version, m.name))


def _schema(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Columns, view and function bodies, constraints, indexes and seeded rows of `public`
    and `governed`, by name."""
    q = conn.execute
    tables: dict[str, Any] = {}
    for rel, col, typ, notnull in q(
        "SELECT n.nspname || '.' || c.relname, a.attname, format_type(a.atttypid, a.atttypmod),"
        " a.attnotnull"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname IN ('public', 'governed') AND c.relkind IN ('r', 'p', 'v')"
        "   AND c.relname !~ '_p[0-9]{6,8}$'"
        " ORDER BY 1, a.attnum"
    ).fetchall():
        tables.setdefault(rel, []).append((col, typ, notnull))
    views = dict(
        q(
            "SELECT n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('public', 'governed') AND c.relkind = 'v'"
        ).fetchall()
    )
    functions = dict(
        q(
            "SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',"
            " pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        ).fetchall()
    )
    constraints = dict(
        q(
            "SELECT conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
        ).fetchall()
    )
    indexes = dict(
        q("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'").fetchall()
    )
    rows = {
        "retention_targets": sorted(q("SELECT * FROM retention_targets").fetchall()),
        "rollup_state": sorted(
            q("SELECT relation, cursor::text, watermark::text FROM rollup_state").fetchall()
        ),
    }
    return {
        "tables": tables,
        "views": views,
        "functions": functions,
        "constraints": constraints,
        "indexes": indexes,
        "rows": rows,
    }


def test_a_type_whose_metrics_are_sql_key_words_is_created_written_and_read(
    db_url: str, device_prefix: str
) -> None:
    extra = catalog_from_document(
        {
            "types": [
                {
                    "name": "odd_sensor", "service": "environment", "description": "Odd.",
                    "metrics": [
                        {"name": n, "kind": "number", "description": n}
                        for n in ("full", "order", "user", "left", "value")
                    ],
                }
            ]
        }
    )  # fmt: skip
    catalog = SHIPPED.extended(extra)
    assert migrate(db_url, catalog=catalog) == ["device type odd_sensor"]
    dev = f"{device_prefix}odd-1"
    with activated(catalog):
        with psycopg.connect(db_url, autocommit=True) as conn:
            upsert_devices(conn, [new_record(dev, "odd_sensor")])
        write(db_url, {"odd_sensor": [(NOW, dev, "environment", 1.0, 2.0, 3.0, 4.0, 5.0)]})
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT metric, value FROM readings WHERE device_id = %s ORDER BY value", (dev,)
        ).fetchall()
        assert rows == [("full", 1.0), ("order", 2.0), ("user", 3.0), ("left", 4.0), ("value", 5.0)]
        with activated(catalog):
            refresh_aggregates(conn)
        hour = conn.execute(
            'SELECT "order_avg", user_count FROM agg_1h_odd_sensor WHERE device_id = %s', (dev,)
        ).fetchall()
        assert hour == [(2.0, 1)]


def test_the_existing_viewer_roles_read_a_type_added_later_under_the_same_rules(
    db_url: str, device_prefix: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_devices(conn, [new_record(f"{device_prefix}air-1", "air_sensor")])
        ensure_roles(conn)
    extra = catalog_from_document(
        {
            "types": [
                {
                    "name": "bin_sensor", "service": "environment", "description": "Bins.",
                    "metrics": [{"name": "fill", "kind": "number", "description": "Fill."}],
                }
            ]
        }
    )  # fmt: skip
    catalog = SHIPPED.extended(extra)
    migrate(db_url, catalog=catalog)
    with activated(catalog):
        with psycopg.connect(db_url, autocommit=True) as conn:
            upsert_devices(
                conn,
                [
                    new_record(f"{device_prefix}bin-1", "bin_sensor"),
                    new_record(f"{device_prefix}bin-2", "bin_sensor", "lighting"),
                ],
            )
        write(
            db_url,
            {
                "bin_sensor": [
                    (NOW, f"{device_prefix}bin-1", "environment", 40.0),
                    (NOW, f"{device_prefix}bin-2", "lighting", 60.0),
                ]
            },
        )
    viewer = db_url.replace("postgresql://postgres@", "postgresql://grafana_environment@", 1)
    with psycopg.connect(viewer, autocommit=True) as conn:
        # Its own bin, not lighting's (no grant), through the governed views.
        rows = conn.execute(
            "SELECT device_id, fill FROM readings_bin_sensor WHERE device_id LIKE %s",
            (f"{device_prefix}%",),
        ).fetchall()
        assert rows == [(f"{device_prefix}bin-1", 40.0)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM public.readings_bin_sensor")


def test_a_store_that_pools_from_a_ledger_gets_no_per_type_pool_view_for_a_new_type(
    db_url: str,
) -> None:
    # The read path's pooled ledger replaces 0031's per-type district views (it drops the
    # ones it finds with the `drop_district_views` section); a type added later gets none.
    assert ddl.SECTIONS["drop_district_views"](V1[:2], "plain") == (
        "DROP VIEW IF EXISTS governed.district_agg_1h_streetlight;\n"
        "DROP VIEW IF EXISTS governed.district_agg_1h_traffic_light;"
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger = conn.execute("SELECT to_regclass('pooled_buckets') IS NOT NULL").fetchone()
        assert ledger == (True,)  # migration 0050
    extra = catalog_from_document(
        {
            "types": [
                {
                    "name": "bin_sensor", "service": "environment", "description": "Bins.",
                    "metrics": [{"name": "fill", "kind": "number", "description": "Fill."}],
                }
            ]
        }
    )  # fmt: skip
    migrate(db_url, catalog=SHIPPED.extended(extra))
    with psycopg.connect(db_url, autocommit=True) as conn:
        views = conn.execute(
            "SELECT to_regclass('governed.agg_1h_bin_sensor') IS NOT NULL,"
            " to_regclass('governed.district_agg_1h_bin_sensor') IS NOT NULL"
        ).fetchone()
    assert views == (True, False)
