"""The cross-service dashboard (air against traffic against lighting) and platform health."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

from grafana.boards_env import MICROGRAMS, WHO
from grafana.boards_fleet import VEHICLES_PER_HOUR, stacked, thresholds
from grafana.model import COORDINATOR_UID, PLATFORM_UID, Board, Query, Variable, service_uid
from grafana.sql import avg, source

# What the cross-service board reads as by default: the environment service studies air
# quality against traffic and lighting under grants from mobility and lighting.
CROSS_DEFAULT: Final = "environment"
_NO2: Final = "NO2"
_TRAFFIC: Final = "vehicles/h"
_LIGHTING: Final = "street lighting kW"
# Every reason a dead letter can have (ingest.decode.REASONS: decode's five, then the
# store's refusal), one platform_stats column each (store/platform_stats.py).
REASONS: Final = (
    "payload_too_large",
    "malformed_payload",
    "unknown_device",
    "schema_violation",
    "timestamp_out_of_range",
    "store_refused",
)


def _right_axis(unit: str) -> list[dm.DynamicConfigValue]:
    return [
        dm.DynamicConfigValue(id_val="unit", value=unit),
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
    ]


def cross_service(timezone: str) -> Board:
    b = Board(
        "city", "silobreak-cross-service", "City: air, traffic and lighting by district",
        service_uid(CROSS_DEFAULT), timezone,
        "NO2 against traffic counts against street lighting, district by district: data from "
        "three services, each shown only as far as the grants of the datasource you read as "
        "allow (pick it above).",
    )  # fmt: skip
    b.choose_datasource()
    b.variable(
        Variable(
            "district", "District",
            "SELECT DISTINCT district FROM devices WHERE district IS NOT NULL ORDER BY 1",
        )
    )  # fmt: skip
    where = "WHERE d.district IN ($district)"
    b.add(
        timeseries.Panel().title("$district: NO2, traffic and lighting").unit(MICROGRAMS)
        .height(9).span(8).min(0)
        .override_by_name(_TRAFFIC, _right_axis(VEHICLES_PER_HOUR))
        .override_by_name(_LIGHTING, _right_axis("kwatt")),
        Query(
            f"WITH s AS (\n  {source('air_sensor', ['no2'])}\n)\n"
            f"SELECT $__timeGroupAlias(s.t, $__interval), {avg('no2')} AS \"{_NO2}\""
            f"\nFROM s JOIN devices d USING (device_id)\n{where}\nGROUP BY 1 ORDER BY 1",
            ("time", _NO2), ref_id="A",
        ),
        Query(
            f"WITH s AS (\n  {source('traffic_light', ['vehicle_count'])}\n)\n"
            "SELECT $__timeGroupAlias(s.t, $__interval),"
            f" sum(s.vehicle_count_sum) / ($__interval_ms / 3600000.0) AS \"{_TRAFFIC}\""
            f"\nFROM s JOIN devices d USING (device_id)\n{where}\nGROUP BY 1 ORDER BY 1",
            ("time", _TRAFFIC), ref_id="B",
        ),
        Query(
            f"WITH s AS (\n  {source('streetlight', ['power_w'])}\n), per_device AS (\n"
            "  SELECT $__timeGroup(s.t, $__interval) AS t, s.device_id,"
            f" {avg('power_w')} AS w FROM s GROUP BY 1, 2\n)\n"
            f"SELECT p.t AS time, sum(p.w) / 1000 AS \"{_LIGHTING}\""
            f"\nFROM per_device p JOIN devices d USING (device_id)\n{where}"
            "\nGROUP BY 1 ORDER BY 1",
            ("time", _LIGHTING), ref_id="C",
        ),
        repeat="district",
    )  # fmt: skip
    b.add(
        table.Panel().title("Districts side by side (over the range)").height(8).span(24)
        .override_by_name("no2", [dm.DynamicConfigValue(id_val="unit", value=MICROGRAMS),
                                  dm.DynamicConfigValue(id_val="thresholds", value={
                                      "mode": "absolute", "steps": [
                                          {"color": "green", "value": None},
                                          {"color": "red", "value": WHO["no2"]}]})]),
        Query(
            f"WITH air AS (\n  {source('air_sensor', ['no2', 'pm25'], level='agg_1h')}\n"
            f"), traffic AS (\n  {source('traffic_light', ['vehicle_count'], level='agg_1h')}\n"
            f"), light AS (\n  {source('streetlight', ['lamp_on', 'power_w'], level='agg_1h')}\n"
            "), hours AS (\n  SELECT greatest(1, extract(epoch FROM $__timeTo()::timestamptz"
            " - $__timeFrom()::timestamptz) / 3600) AS n\n"
            "), a AS (\n  SELECT d.district, "
            f"{avg('no2', 'x')} AS no2, {avg('pm25', 'x')} AS pm25"
            "\n  FROM air x JOIN devices d USING (device_id) GROUP BY 1\n"
            "), t AS (\n  SELECT d.district, sum(x.vehicle_count_sum) / (SELECT n FROM hours)"
            " AS vehicles_per_hour\n  FROM traffic x JOIN devices d USING (device_id)"
            " GROUP BY 1\n"
            "), l AS (\n  SELECT d.district,"
            " sum(x.power_w_sum / nullif(x.power_w_count, 0)) / 1000 AS lighting_kwh,"
            f" 100 * {avg('lamp_on', 'x')} AS lamps_lit_pct"
            "\n  FROM light x JOIN devices d USING (device_id) GROUP BY 1\n)\n"
            "SELECT district, a.no2, a.pm25, t.vehicles_per_hour, l.lighting_kwh,"
            " l.lamps_lit_pct\nFROM a FULL JOIN t USING (district) FULL JOIN l USING (district)"
            "\nWHERE district IN ($district) ORDER BY 1",
            ("district", "no2", "pm25", "vehicles_per_hour", "lighting_kwh", "lamps_lit_pct"),
            "table",
        ),
    )  # fmt: skip
    return b


def platform(timezone: str) -> Board:
    b = Board(
        "platform", "silobreak-platform", "Platform health", PLATFORM_UID, timezone,
        "Ingest, rejects, lag, presence and stream deliveries, as the platform records them "
        "in the store every 10 s (platform_stats, platform_fleet_stats).",
    )  # fmt: skip
    last_minute = (
        "time > $__timeTo()::timestamptz - INTERVAL '1 minute' AND time <= $__timeTo()::timestamptz"
    )
    b.add(
        stat.Panel().title("Stored now").unit("suffix: msg/s").height(4).span(6),
        Query(
            "SELECT coalesce(sum(rate), 0) AS stored_per_s FROM (SELECT source,"
            " sum(stored) / sum(window_s) AS rate FROM platform_stats"
            f" WHERE {last_minute} GROUP BY 1) x",
            ("stored_per_s",), "table",
        ),
    )  # fmt: skip
    b.add(
        stat.Panel().title("Devices online").height(4).span(6),
        Query(
            "SELECT devices_online, devices_offline FROM platform_fleet_stats"
            " WHERE time <= $__timeTo()::timestamptz ORDER BY time DESC LIMIT 1",
            ("devices_online", "devices_offline"), "table",
        ),
    )  # fmt: skip
    b.add(
        stat.Panel().title("Rejected in the last hour").height(4).span(6)
        .thresholds(thresholds((None, "green"), (1, "orange"))),
        Query(
            "SELECT coalesce(sum("
            + " + ".join(f"rejected_{r}" for r in REASONS)
            + "), 0) AS rejected FROM platform_stats WHERE time > $__timeTo()::timestamptz"
            " - INTERVAL '1 hour' AND time <= $__timeTo()::timestamptz",
            ("rejected",), "table",
        ),
    )  # fmt: skip
    b.add(
        stat.Panel().title("Ingest processes reporting").height(4).span(6)
        .thresholds(thresholds((None, "red"), (1, "green"))),
        Query(
            "SELECT count(DISTINCT source) AS processes FROM platform_stats"
            " WHERE time > $__timeTo()::timestamptz - INTERVAL '30 seconds'"
            " AND time <= $__timeTo()::timestamptz",
            ("processes",), "table",
        ),
    )  # fmt: skip
    per_source = (
        "SELECT $__timeGroup(time, $__interval) AS t, source, {cols}"
        " FROM platform_stats WHERE $__timeFilter(time) GROUP BY 1, 2"
    )
    rates = ", ".join(
        f"sum({c}) / sum(window_s) AS {c}" for c in ("received", "stored", "duplicates")
    )
    b.add(
        timeseries.Panel().title("Ingest rate").unit("suffix: msg/s").height(8).span(12),
        Query(
            f"SELECT t AS time, sum(received) AS received, sum(stored) AS stored,"
            f" sum(duplicates) AS duplicates\nFROM ({per_source.format(cols=rates)}) x"
            "\nGROUP BY 1 ORDER BY 1",
            ("time", "received", "stored", "duplicates"),
        ),
    )  # fmt: skip
    unpivot = ", ".join(f"('{r}', rejected_{r})" for r in REASONS)
    b.add(
        timeseries.Panel().title("Rejects by reason").unit("suffix: msg/min").height(8).span(12)
        .draw_style(common.GraphDrawStyle.BARS).fill_opacity(80).stacking(stacked()),
        Query(
            "SELECT $__timeGroupAlias(time, $__interval), r.reason AS metric,"
            " 60 * sum(r.n) / sum(window_s) AS value\nFROM platform_stats"
            f" CROSS JOIN LATERAL (VALUES {unpivot}) AS r(reason, n)"
            "\nWHERE $__timeFilter(time)\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    lag_cols = "max(pending) AS pending, avg(commit_s) AS commit_s"
    b.add(
        timeseries.Panel().title("Lag: messages waiting for commit, batch commit time")
        .unit("short").height(8).span(12)
        .override_by_name("batch commit time", _right_axis("s")),
        Query(
            "SELECT t AS time, sum(pending) AS \"messages waiting\","
            " avg(commit_s) AS \"batch commit time\""
            f"\nFROM ({per_source.format(cols=lag_cols)}) x GROUP BY 1 ORDER BY 1",
            ("time", "messages waiting", "batch commit time"),
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Devices online and offline").height(8).span(12)
        .fill_opacity(20).stacking(stacked()),
        Query(
            "SELECT $__timeGroupAlias(time, $__interval), avg(devices_online) AS online,"
            " avg(devices_offline) AS offline\nFROM platform_fleet_stats"
            "\nWHERE $__timeFilter(time)\nGROUP BY 1 ORDER BY 1",
            ("time", "online", "offline"),
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Stream deliveries").unit("suffix: readings/s").height(8)
        .span(12).override_by_name("batches per minute", _right_axis("short")),
        Query(
            "SELECT $__timeGroupAlias(time, $__interval),"
            " sum(delivered_readings) / sum(window_s) AS \"readings delivered\","
            " 60 * sum(deliveries) / sum(window_s) AS \"batches per minute\""
            "\nFROM platform_fleet_stats\nWHERE $__timeFilter(time)\nGROUP BY 1 ORDER BY 1",
            ("time", "readings delivered", "batches per minute"),
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("Ingest processes").height(6).span(12),
        Query(
            "SELECT source, max(time) AS last_report,"
            " sum(stored) / sum(window_s) AS stored_per_s, (array_agg(pending ORDER BY time"
            " DESC))[1] AS pending, bool_and(store_up) AS store_up"
            f"\nFROM platform_stats WHERE {last_minute}\nGROUP BY 1 ORDER BY 1",
            ("source", "last_report", "stored_per_s", "pending", "store_up"), "table",
        ),
    )  # fmt: skip
    b.add(
        stat.Panel().title("Store jobs whose last scheduled run failed").height(6).span(12)
        .description(
            "TimescaleDB's scheduler ends every run Failed on PostgreSQL 15.20 and later"
            " (its work is committed); the platform's upkeep runs the jobs itself."
            " `silobreak maintain` names them and their error (store_job_status)."
        )
        .thresholds(thresholds((None, "green"), (1, "orange"))),
        Query(
            "SELECT count(*) AS failed_jobs, coalesce(sum(total_failures), 0) AS failures"
            "\nFROM store_job_status WHERE last_run_status = 'Failed'",
            ("failed_jobs", "failures"), "table",
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("Data flows of your organisation").height(8).span(24)
        .description(
            "Who read what from whom, in and out of the organisation whose coordinator this"
            " datasource logs in as: readings per day and grant, from the access audit"
            " (docs/organisations.md). Any other login sees no rows."
        ),
        Query(
            "SELECT direction, owner_org, owner, consumer_org, consumer, purpose, grant_id,"
            " sum(readings) AS readings, sum(requests) AS requests"
            "\nFROM data_flows($__timeFrom(), $__timeTo(), INTERVAL '1 day')"
            "\nGROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY readings DESC",
            ("direction", "owner_org", "owner", "consumer_org", "consumer", "purpose",
             "grant_id", "readings", "requests"), "table",
        ),
        source=COORDINATOR_UID,
    )  # fmt: skip
    return b
