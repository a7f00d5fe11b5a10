"""The environment dashboard (air quality against WHO guidelines) and the utilities' (meters)."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common

from grafana.boards_fleet import districts, stacked, thresholds
from grafana.model import Board, Query, Variable, service_uid
from grafana.sql import avg, device_mean, energy_avg, latest, local, local_day, source

MICROGRAMS: Final = "conµgm3"
DECIBELS: Final = "dB"
# WHO Environmental Noise Guidelines (2018), road traffic: 53 dB Lden, 45 dB Lnight. The
# hourly LAeq is held against the day figure: above it, road noise harms health.
WHO_ROAD_NOISE: Final = 53.0
POLLUTANTS: Final = ("pm25", "pm10", "no2", "o3")
LABELS: Final = {"pm25": "PM2.5", "pm10": "PM10", "no2": "NO2", "o3": "O3"}
# WHO global air quality guidelines (2021), µg/m³: 24-hour means for PM2.5, PM10 and NO2, the
# 8-hour mean for O3 (the hourly series is held against it: a reading above it is a warning).
WHO: Final = {"pm25": 15.0, "pm10": 45.0, "no2": 25.0, "o3": 100.0}
# What the meters of each medium measure: (index unit, flow unit) per the device catalog.
UNITS: Final = {"electricity": "kWh", "heat": "kWh", "gas": "m³", "water": "m³"}
# Night flow is read between these local hours (inclusive starts): households sleep, a meter
# that still turns is leaking (water) or feeding a standing load (electricity, heat).
NIGHT_HOURS: Final = (2, 4)
# A meter's busiest hour past this many times its typical (median) hour is a spike.
SPIKE_FACTOR: Final = 5


def _guideline_style() -> cb.GraphThresholdsStyleConfig:
    """The guideline drawn as a line, the band above it shaded."""
    return cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE_AND_AREA)


def environment(timezone: str) -> Board:
    b = Board(
        "environment", "silobreak-environment", "Environment: air quality and noise",
        service_uid("environment"), timezone,
        "The environment service's air and noise sensors against the WHO guidelines.",
    )  # fmt: skip
    b.variable(districts("air_sensor"))
    b.variable(
        Variable(
            "device", "Sensor",
            "SELECT device_id FROM devices WHERE device_type = 'air_sensor'"
            " AND district IN ($district) ORDER BY 1",
        )
    )  # fmt: skip
    b.variable(Variable("metric", "Pollutant", options=POLLUTANTS, multi=False))
    in_scope = "d.district IN ($district) AND d.device_id IN ($device)"
    for metric in POLLUTANTS:
        b.add(
            timeseries.Panel()
            .title(f"{LABELS[metric]} by district (WHO guideline {WHO[metric]:g})")
            .unit(MICROGRAMS).height(8).span(12).min(0)
            .thresholds(thresholds((None, "green"), (WHO[metric], "red")))
            .thresholds_style(_guideline_style()),
            Query(
                f"WITH s AS (\n  {source('air_sensor', [metric])}\n)\n"
                "SELECT $__timeGroupAlias(s.t, $__interval), d.district AS metric,"
                f" {avg(metric)} AS value\nFROM s JOIN devices d USING (device_id)"
                f"\nWHERE {in_scope}\nGROUP BY 1, 2 ORDER BY 1, 2",
                ("time", "metric", "value"),
            ),
        )  # fmt: skip
    b.add(
        timeseries.Panel().title("$metric by sensor").unit(MICROGRAMS).height(8).span(24),
        Query(
            f"WITH s AS (\n  {source('air_sensor', list(POLLUTANTS))}\n)\n"
            "SELECT $__timeGroupAlias(s.t, $__interval), s.device_id AS metric,"
            " sum(s.${metric}_sum) / nullif(sum(s.${metric}_count), 0) AS value"
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    day = local_day("s.t", timezone)
    means = ", ".join(f"{avg(m)} AS {m}" for m in ("pm25", "pm10", "no2"))
    over = (
        " + ".join(f"({avg(m)} > {WHO[m]:g})::int" for m in ("pm25", "pm10", "no2"))
        + f" + (max({device_mean('o3')}) > {WHO['o3']:g})::int"
    )
    b.add(
        table.Panel().title("Daily means against the WHO 24-hour guidelines").height(9)
        .span(24).thresholds(thresholds((None, "green"), (1, "red"))),
        Query(
            f"WITH s AS (\n  {source('air_sensor', list(POLLUTANTS), level='agg_1h')}\n)\n"
            f"SELECT {day} AS day, d.district, {means},"
            f" max({device_mean('o3')}) AS o3_max_hour, {over} AS above_guideline"
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY 1 DESC, 2",
            ("day", "district", "pm25", "pm10", "no2", "o3_max_hour", "above_guideline"),
            "table",
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel()
        .title(f"Road noise by district, LAeq (WHO guideline {WHO_ROAD_NOISE:g} dB)")
        .unit(DECIBELS).height(8).span(24)
        .thresholds(thresholds((None, "green"), (WHO_ROAD_NOISE, "red")))
        .thresholds_style(_guideline_style()),
        Query(
            f"WITH s AS (\n  {source('noise_sensor', ['laeq'], energy=['laeq'])}\n)\n"
            "SELECT $__timeGroupAlias(s.t, $__interval), d.district AS metric,"
            f" {energy_avg('laeq')} AS value\nFROM s JOIN devices d USING (device_id)"
            "\nWHERE d.district IN ($district)\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    metrics = ("pm25", "pm10", "no2", "o3", "temperature_c", "humidity_pct")
    now = latest("air_sensor", metrics, window="30 minutes")
    b.add(
        table.Panel().title("Sensors now").height(8).span(24),
        Query(
            "SELECT n.device_id, d.district, n.time AS last_reading, "
            + ", ".join(f"n.{m}" for m in metrics)
            + f"\nFROM ({now}) n JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nORDER BY 1",
            ("device_id", "district", "last_reading", *metrics), "table",
        ),
    )  # fmt: skip
    return b


def utilities(service: str, media: tuple[str, ...], timezone: str) -> Board:
    title = {"energy": "Energy: meters", "water": "Water: meters"}.get(service, service)
    b = Board(
        service, f"silobreak-{service}", title, service_uid(service), timezone,
        f"The {service} service's meters: consumption, night flow (leaks), anomalies.",
    )  # fmt: skip
    b.variable(
        Variable(
            "district", "District",
            f"SELECT DISTINCT district FROM devices WHERE device_type = 'meter'"
            f" AND service = '{service}' AND district IS NOT NULL ORDER BY 1",
        )
    )  # fmt: skip
    b.variable(Variable("medium", "Medium", options=media, multi=False))
    in_scope = "d.district IN ($district) AND d.medium = '$medium'"
    unit = "CASE d.medium " + " ".join(f"WHEN '{m}' THEN '{u}'" for m, u in UNITS.items())
    unit += " END"
    b.add(
        timeseries.Panel().title("Consumption by district ($medium)").height(8).span(12)
        .fill_opacity(20).stacking(stacked()),
        Query(
            f"WITH s AS (\n  {source('meter', ['flow'])}\n), per_device AS (\n"
            "  SELECT $__timeGroup(s.t, $__interval) AS t, s.device_id,"
            f" {avg('flow')} * $__interval_ms / 3600000.0 AS used FROM s GROUP BY 1, 2\n)\n"
            f"SELECT p.t AS time, d.district || ' (' || {unit} || ')' AS metric,"
            " sum(p.used) AS value\nFROM per_device p JOIN devices d USING (device_id)"
            f"\nWHERE {in_scope}\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Consumption per day by district ($medium)").height(8)
        .span(12).draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
        .stacking(stacked()),
        Query(
            f"WITH s AS (\n  {source('meter', ['flow'], level='agg_1h')}\n)\n"
            f"SELECT {local_day('s.t', timezone)} AS time,"
            f" d.district || ' (' || {unit} || ')' AS metric,"
            f" sum({device_mean('flow')}) AS value\nFROM s JOIN devices d USING (device_id)"
            f"\nWHERE {in_scope}\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    first, last = NIGHT_HOURS
    b.add(
        table.Panel().title(
            f"Night flow {first:02d}:00-{last + 1:02d}:00 (possible leaks, standing loads)"
        ).height(9).span(12),
        Query(
            f"WITH s AS (\n  {source('meter', ['flow'], level='agg_1h')}\n), nightly AS (\n"
            f"  SELECT s.device_id, {local_day('s.t', timezone, shift_hours=12)} AS night,"
            f" min({device_mean('flow')}) AS low\n  FROM s"
            f" WHERE extract(hour FROM {local('s.t', timezone)}) BETWEEN {first} AND {last}"
            "\n  GROUP BY 1, 2\n)\n"
            f"SELECT n.device_id, d.district, {unit} || '/h' AS unit, count(*) AS nights,"
            " min(n.low) AS lowest_night_flow, avg(n.low) AS mean_night_flow"
            f"\nFROM nightly n JOIN devices d USING (device_id)\nWHERE {in_scope}"
            " AND n.low > 0\nGROUP BY 1, 2, 3 ORDER BY lowest_night_flow DESC, 1 LIMIT 50",
            ("device_id", "district", "unit", "nights", "lowest_night_flow",
             "mean_night_flow"), "table",
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("Meter anomalies").height(9).span(12),
        Query(_anomalies(in_scope), ("device_id", "district", "anomaly", "occurrences",
                                     "last_seen"), "table"),
    )  # fmt: skip
    b.add(
        stat.Panel().title("Meters reporting in the last hour ($medium)").height(4).span(24)
        .color_mode(common.BigValueColorMode.VALUE),
        Query(
            "SELECT count(*) FILTER (WHERE d.last_seen > $__timeTo()::timestamptz"
            " - INTERVAL '1 hour') AS reporting, count(*) FILTER (WHERE d.last_seen IS NULL"
            " OR d.last_seen <= $__timeTo()::timestamptz - INTERVAL '1 hour') AS silent"
            f"\nFROM devices d WHERE d.device_type = 'meter' AND {in_scope}",
            ("reporting", "silent"), "table",
        ),
    )  # fmt: skip
    return b


def _anomalies(in_scope: str) -> str:
    return (
        f"WITH s AS (\n  {source('meter', ['flow'], level='agg_1h')}\n"
        f"), hourly AS (\n  SELECT s.device_id, s.t, {device_mean('flow')} AS flow FROM s\n"
        "), typical AS (\n  SELECT device_id,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY flow) AS median FROM hourly GROUP BY 1\n"
        '), raw AS (\n  SELECT r.device_id, r.time, r."index",'
        ' lag(r."index") OVER (PARTITION BY r.device_id ORDER BY r.time) AS before'
        '\n  FROM readings_meter r WHERE $__timeFilter(r.time) AND r."index" IS NOT NULL\n'
        "), found AS (\n"
        "  SELECT m.device_id, 'rejected: ' || m.reason AS anomaly, count(*) AS occurrences,"
        " max(m.received_at) AS last_seen\n  FROM rejected_messages m"
        " WHERE $__timeFilter(m.received_at) GROUP BY 1, 2\n"
        "  UNION ALL\n"
        "  SELECT device_id, 'index went back (replaced or reset)', count(*), max(time)\n"
        '  FROM raw WHERE "index" < before GROUP BY 1\n'
        "  UNION ALL\n"
        f"  SELECT h.device_id, 'flow spike (over {SPIKE_FACTOR}x its median hour)',"
        " count(*), max(h.t)\n  FROM hourly h JOIN typical USING (device_id)"
        f" WHERE typical.median > 0 AND h.flow > {SPIKE_FACTOR} * typical.median GROUP BY 1\n"
        ")\nSELECT f.device_id, d.district, f.anomaly, f.occurrences, f.last_seen"
        f"\nFROM found f JOIN devices d USING (device_id)\nWHERE d.device_type = 'meter'"
        f" AND {in_scope}\nORDER BY f.last_seen DESC, 1, 3 LIMIT 200"
    )
