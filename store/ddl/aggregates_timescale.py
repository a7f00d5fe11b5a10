"""Generated SQL of the TimescaleDB backend's aggregates, chunk sizes, policies, compression."""

from __future__ import annotations

from collections.abc import Sequence

from devices.catalog import DeviceType
from store.ddl.aggregates_plain import hour_stats, raw_stats
from store.ddl.names import interval


def chunk_intervals(types: Sequence[DeviceType]) -> str:
    return "\n".join(
        f"SELECT set_chunk_time_interval('readings_{t.name}', {interval(t.chunk_interval)});"
        for t in types
    )


def continuous_aggregates(types: Sequence[DeviceType]) -> str:
    """Per type: a 1-minute continuous aggregate and a 1-hour one built on it."""
    return "\n\n".join(_caggs(t) for t in types)


def refresh_policies(types: Sequence[DeviceType]) -> str:
    lines = []
    for t in types:
        lines += [
            (
                f"SELECT add_continuous_aggregate_policy('agg_1m_{t.name}',"
                " start_offset => INTERVAL '8 days',\n"
                "    end_offset => INTERVAL '2 minutes', schedule_interval => INTERVAL '5 minutes',"
                " buckets_per_batch => 0);"
            ),
            (
                f"SELECT add_continuous_aggregate_policy('agg_1h_{t.name}',"
                " start_offset => INTERVAL '8 days',\n"
                "    end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes',"
                " buckets_per_batch => 0);"
            ),
        ]
    return "\n".join(lines)


def compression(types: Sequence[DeviceType]) -> str:
    return "\n".join(
        f"ALTER TABLE readings_{t.name} SET (timescaledb.compress,\n"
        "    timescaledb.compress_segmentby = 'device_id, service',"
        " timescaledb.compress_orderby = 'time DESC');\n"
        f"SELECT add_compression_policy('readings_{t.name}',"
        " compress_after => INTERVAL '8 days');\n"
        f"ALTER MATERIALIZED VIEW agg_1m_{t.name} SET (timescaledb.compress = true);\n"
        f"SELECT add_compression_policy('agg_1m_{t.name}', compress_after => INTERVAL '10 days');"
        for t in types
    )


def _caggs(t: DeviceType) -> str:
    n = t.name
    minute = ",\n".join(
        "    " + e
        for m in t.metrics
        for e in raw_stats(
            m, f'last(r."{m.name}"::float8, r.time) FILTER (WHERE r."{m.name}" IS NOT NULL)'
        )
    )
    hour = ",\n".join(
        "    " + e
        for m in t.metrics
        for e in hour_stats(
            m, f"last(a.{m.name}_last, a.bucket) FILTER (WHERE a.{m.name}_last IS NOT NULL)"
        )
    )
    return (
        f"CREATE MATERIALIZED VIEW agg_1m_{n}\n"
        "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS\n"
        "SELECT time_bucket(INTERVAL '1 minute', r.time) AS bucket, r.device_id, r.service,\n"
        f"{minute}\n"
        f"FROM readings_{n} r\n"
        "GROUP BY 1, 2, 3\n"
        "WITH NO DATA;\n\n"
        f"CREATE MATERIALIZED VIEW agg_1h_{n}\n"
        "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS\n"
        "SELECT time_bucket(INTERVAL '1 hour', a.bucket) AS bucket, a.device_id, a.service,\n"
        f"{hour}\n"
        f"FROM agg_1m_{n} a\n"
        "GROUP BY 1, 2, 3\n"
        "WITH NO DATA;\n"
        f"SELECT set_chunk_time_interval('agg_1m_{n}', {interval(t.chunk_interval)});\n"
        f"SELECT set_chunk_time_interval('agg_1h_{n}', INTERVAL '30 days');"
    )
