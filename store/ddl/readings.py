"""Generated SQL of the raw readings: tables, the narrow view, retention, the registry CHECK."""

from __future__ import annotations

from collections.abc import Sequence

from devices.catalog import DeviceType
from store.ddl.names import SQL_TYPES, ident, quoted_list


def device_type_list(types: Sequence[DeviceType]) -> str:
    """The registry's `CHECK (device_type IN (...))` list."""
    return quoted_list([t.name for t in types])


def widen_check(types: Sequence[DeviceType]) -> str:
    """The registry's CHECK replaced by one that lists every type of the catalog."""
    return (
        "ALTER TABLE devices DROP CONSTRAINT devices_device_type_check,\n"
        "    ADD CONSTRAINT devices_device_type_check"
        f" CHECK (device_type IN ({quoted_list([t.name for t in types])}));"
    )


def tables(types: Sequence[DeviceType], backend: str) -> str:
    """One wide table (a hypertable on TimescaleDB) per type."""
    return "\n\n".join(_table(t, backend) for t in types)


def view(types: Sequence[DeviceType], *, replace: bool = False) -> str:
    """The public `readings` view: one row per metric per message."""
    return narrow_view("readings", "", types, replace)


def narrow_view(name: str, schema: str, types: Sequence[DeviceType], replace: bool) -> str:
    verb = "CREATE OR REPLACE VIEW" if replace else "CREATE VIEW"
    selects = [
        f"SELECT r.time, r.device_id, r.service, '{t.name}'::text AS device_type,"
        " m.metric, m.value\n"
        f"FROM {schema}readings_{t.name} r\n"
        "CROSS JOIN LATERAL (VALUES "
        + ", ".join(f"('{m.name}', r.{ident(m.name)}::double precision)" for m in t.metrics)
        + ") AS m(metric, value)\nWHERE m.value IS NOT NULL"
        for t in types
    ]
    return f"{verb} {schema}{name} AS\n" + "\nUNION ALL\n".join(selects) + ";"


def retention_targets(types: Sequence[DeviceType], backend: str) -> str:
    """What retention works on: each raw table and each aggregate's store."""
    store = "rollup" if backend == "plain" else "agg"
    rows = [f"('readings_{t.name}', 'raw', 'time')" for t in types]
    rows += [
        f"('{store}_{lv}_{t.name}', 'aggregate', 'bucket')" for lv in ("1m", "1h") for t in types
    ]
    return (
        "INSERT INTO retention_targets (relation, kind, time_column) VALUES\n"
        + ",\n".join(f"    {r}" for r in rows)
        + ";"
    )


def _table(t: DeviceType, backend: str) -> str:
    columns = "".join(f"    {ident(m.name)} {SQL_TYPES[m.kind]},\n" for m in t.metrics)
    text = (
        f"CREATE TABLE readings_{t.name} (\n"
        "    time      timestamptz NOT NULL,\n"
        "    device_id text NOT NULL,\n"
        "    service   text NOT NULL,\n"
        "    -- The id of the transaction that stored the row (commit-order cursors for streams).\n"
        "    batch     bigint NOT NULL DEFAULT txid_current(),\n"
        f"{columns}"
        "    PRIMARY KEY (device_id, time)\n"
    )
    if backend == "plain":
        text += ") PARTITION BY RANGE (time);\n"
    else:
        text += (
            ");\n"
            f"SELECT create_hypertable('readings_{t.name}', by_range('time', INTERVAL '1 day'),\n"
            "    create_default_indexes => false);\n"
        )
    return text + f"CREATE INDEX readings_{t.name}_batch_idx ON readings_{t.name} (batch);"
