"""The lighting and mobility dashboards: lamps, energy, failures, dimming; signals and traffic."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import barchart, stat, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

from grafana.model import Board, Query, Variable, service_uid
from grafana.sql import avg, device_mean, latest, local, local_day, source

# A lamp switched on that draws less than this is dead (a lit LED lantern draws 20 W or more;
# the simulator's failed lamps report 0 W).
FAILED_LAMP_W: Final = 1.0
# Traffic light phase codes (device catalog): 3 flashing amber, 4 off are faults.
PHASE_FAULT: Final = 3
# Grafana has no unit for this: a custom suffix.
VEHICLES_PER_HOUR: Final = "suffix: veh/h"


def districts(device_type: str) -> Variable:
    return Variable(
        "district",
        "District",
        f"SELECT DISTINCT district FROM devices WHERE device_type = '{device_type}'"
        " AND district IS NOT NULL ORDER BY 1",
    )


def devices(device_type: str, label: str) -> Variable:
    return Variable(
        "device",
        label,
        f"SELECT device_id FROM devices WHERE device_type = '{device_type}'"
        " AND district IN ($district) ORDER BY 1",
    )


def stacked() -> cb.StackingConfig:
    return cb.StackingConfig().mode(common.StackingMode.NORMAL)


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def lighting(timezone: str) -> Board:
    b = Board(
        "lighting", "silobreak-lighting", "Lighting: street lamps", service_uid("lighting"),
        timezone, "The lighting service's lamps: on/off, energy, failures and dimming.",
    )  # fmt: skip
    b.variable(districts("streetlight"))
    b.variable(devices("streetlight", "Lamp"))
    now = latest("streetlight", ("lamp_on", "power_w"), window="15 minutes")
    in_scope = "d.district IN ($district) AND d.device_id IN ($device)"
    b.add(
        stat.Panel().title("Lamps on now").height(5).span(6)
        .color_mode(common.BigValueColorMode.VALUE),
        Query(
            f"SELECT count(*) FILTER (WHERE n.lamp_on = 1) AS lamps_on\nFROM ({now}) n"
            f"\nJOIN devices d USING (device_id) WHERE {in_scope}",
            ("lamps_on",), "table",
        ),
    )  # fmt: skip
    b.add(
        stat.Panel().title("Failed lamps now (on, no power)").height(5).span(6)
        .thresholds(thresholds((None, "green"), (1, "red"))),
        Query(
            f"SELECT count(*) FILTER (WHERE n.lamp_on = 1 AND n.power_w < {FAILED_LAMP_W})"
            f" AS failed\nFROM ({now}) n JOIN devices d USING (device_id) WHERE {in_scope}",
            ("failed",), "table",
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("Lamps on/off by district (now)").height(5).span(12),
        Query(
            "SELECT d.district, count(*) FILTER (WHERE n.lamp_on = 1) AS \"on\","
            " count(*) FILTER (WHERE n.lamp_on = 0) AS \"off\","
            f" count(*) FILTER (WHERE n.lamp_on = 1 AND n.power_w < {FAILED_LAMP_W}) AS failed,"
            " count(*) FILTER (WHERE n.device_id IS NULL) AS silent"
            f"\nFROM devices d LEFT JOIN ({now}) n USING (device_id)"
            "\nWHERE d.device_type = 'streetlight' AND d.district IN ($district)"
            "\nGROUP BY 1 ORDER BY 1",
            ("district", "on", "off", "failed", "silent"), "table",
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Lamps on by district").unit("percent").min(0).max(100)
        .height(8).span(12),
        Query(
            f"WITH s AS (\n  {source('streetlight', ['lamp_on'])}\n)\n"
            "SELECT $__timeGroupAlias(s.t, $__interval), d.district AS metric,"
            f" 100 * {avg('lamp_on')} AS value\nFROM s JOIN devices d USING (device_id)"
            f"\nWHERE {in_scope}\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Power drawn by district").unit("kwatt").height(8).span(12)
        .fill_opacity(20).stacking(stacked()),
        Query(
            f"WITH s AS (\n  {source('streetlight', ['power_w'])}\n), per_device AS (\n"
            "  SELECT $__timeGroup(s.t, $__interval) AS t, s.device_id,"
            f" {avg('power_w')} AS w FROM s GROUP BY 1, 2\n)\n"
            "SELECT p.t AS time, d.district AS metric, sum(p.w) / 1000 AS value"
            f"\nFROM per_device p JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    night = local_day("s.t", timezone, shift_hours=12)
    b.add(
        timeseries.Panel().title("Energy per night by district").unit("kwatth")
        .draw_style(common.GraphDrawStyle.BARS).fill_opacity(80).height(8).span(12)
        .stacking(stacked()),
        Query(
            f"WITH s AS (\n  {source('streetlight', ['power_w'], level='agg_1h')}\n)\n"
            f"SELECT {night} AS time, d.district AS metric,"
            f" sum({device_mean('power_w')}) / 1000 AS value"
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("Failed lamps (on, drawing no power)").height(8).span(12),
        Query(
            "SELECT r.device_id, d.district, min(r.time) AS first_seen, max(r.time) AS last_seen,"
            " count(*) AS readings\nFROM readings_streetlight r JOIN devices d USING (device_id)"
            f"\nWHERE $__timeFilter(r.time) AND r.lamp_on = 1 AND r.power_w < {FAILED_LAMP_W}"
            f" AND {in_scope}\nGROUP BY 1, 2 ORDER BY last_seen DESC, 1 LIMIT 200",
            ("device_id", "district", "first_seen", "last_seen", "readings"), "table",
        ),
    )  # fmt: skip
    hour = f"to_char({local('s.t', timezone)}, 'HH24')"
    b.add(
        barchart.Panel().title("Dimming profile (local time)").unit("percent").height(8)
        .span(12).x_field("hour"),
        Query(
            f"WITH s AS (\n  {source('streetlight', ['lamp_on', 'dim_level'], level='agg_1h')}"
            f"\n)\nSELECT {hour} AS hour,"
            " sum(s.dim_level_sum) / nullif(sum(s.lamp_on_sum), 0) AS \"dim level of lit lamps\","
            f" 100 * {avg('lamp_on')} AS \"lamps lit\""
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1 ORDER BY 1",
            ("hour", "dim level of lit lamps", "lamps lit"), "table",
        ),
    )  # fmt: skip
    return b


def mobility(timezone: str) -> Board:
    b = Board(
        "mobility", "silobreak-mobility", "Mobility: traffic lights and parking",
        service_uid("mobility"), timezone,
        "The mobility service's signals (faults, vehicle counts, rush hours) and parking bays.",
    )  # fmt: skip
    b.variable(districts("traffic_light"))
    b.variable(devices("traffic_light", "Intersection"))
    in_scope = "d.district IN ($district) AND d.device_id IN ($device)"
    now = latest("traffic_light", ("phase",), window="10 minutes")
    phases: list[dm.ValueMapping] = [
        dm.ValueMap(options={
            "0": dm.ValueMappingResult(text="red", color="red"),
            "1": dm.ValueMappingResult(text="amber", color="orange"),
            "2": dm.ValueMappingResult(text="green", color="green"),
            "3": dm.ValueMappingResult(text="flashing amber", color="yellow"),
            "4": dm.ValueMappingResult(text="off", color="dark-red"),
        })
    ]  # fmt: skip
    b.add(
        stat.Panel().title("Signals in fault now").height(5).span(6)
        .thresholds(thresholds((None, "green"), (1, "red"))),
        Query(
            f"SELECT count(*) FILTER (WHERE n.phase >= {PHASE_FAULT}) AS in_fault"
            f"\nFROM ({now}) n JOIN devices d USING (device_id) WHERE {in_scope}",
            ("in_fault",), "table",
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("Traffic light faults").height(8).span(18).mappings(phases),
        Query(
            "SELECT r.device_id, d.district, max(r.phase) AS worst_phase,"
            " min(r.time) AS first_seen, max(r.time) AS last_seen, count(*) AS readings"
            "\nFROM readings_traffic_light r JOIN devices d USING (device_id)"
            f"\nWHERE $__timeFilter(r.time) AND r.phase >= {PHASE_FAULT} AND {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY last_seen DESC, 1 LIMIT 200",
            ("device_id", "district", "worst_phase", "first_seen", "last_seen", "readings"),
            "table",
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Signals in fault by district").height(8).span(12)
        .draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
        .stacking(stacked()),
        Query(
            f"WITH s AS (\n  {source('traffic_light', ['phase'])}\n)\n"
            "SELECT $__timeGroupAlias(s.t, $__interval), d.district AS metric,"
            f" count(DISTINCT s.device_id) FILTER (WHERE s.phase_max >= {PHASE_FAULT}) AS value"
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Vehicles per intersection").unit(VEHICLES_PER_HOUR).height(8)
        .span(12),
        Query(
            f"WITH s AS (\n  {source('traffic_light', ['vehicle_count'])}\n)\n"
            "SELECT $__timeGroupAlias(s.t, $__interval), s.device_id AS metric,"
            " sum(s.vehicle_count_sum) / ($__interval_ms / 3600000.0) AS value"
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    day = local_day("s.t", timezone)
    weekend = f"extract(isodow FROM {local('s.t', timezone)}) >= 6"
    b.add(
        barchart.Panel().title("Rush-hour profile (vehicles/h by local hour)")
        .unit(VEHICLES_PER_HOUR).height(8).span(12).x_field("hour"),
        Query(
            f"WITH s AS (\n  {source('traffic_light', ['vehicle_count'], level='agg_1h')}\n)\n"
            f"SELECT to_char({local('s.t', timezone)}, 'HH24') AS hour,"
            f" sum(s.vehicle_count_sum) FILTER (WHERE NOT {weekend})"
            f" / nullif(count(DISTINCT {day}) FILTER (WHERE NOT {weekend}), 0) AS weekdays,"
            f" sum(s.vehicle_count_sum) FILTER (WHERE {weekend})"
            f" / nullif(count(DISTINCT {day}) FILTER (WHERE {weekend}), 0) AS weekends"
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1 ORDER BY 1",
            ("hour", "weekdays", "weekends"), "table",
        ),
    )  # fmt: skip
    b.add(
        table.Panel().title("Busiest intersections").height(8).span(12),
        Query(
            f"WITH s AS (\n  {source('traffic_light', ['vehicle_count'], level='agg_1h')}\n)\n"
            "SELECT s.device_id, d.district, sum(s.vehicle_count_sum) AS vehicles,"
            " max(s.vehicle_count_sum) AS peak_hour"
            f"\nFROM s JOIN devices d USING (device_id)\nWHERE {in_scope}"
            "\nGROUP BY 1, 2 ORDER BY vehicles DESC NULLS LAST LIMIT 20",
            ("device_id", "district", "vehicles", "peak_hour"), "table",
        ),
    )  # fmt: skip
    b.add(
        timeseries.Panel().title("Parking occupancy by district").unit("percentunit")
        .height(8).span(24).min(0).max(1),
        Query(
            f"WITH s AS (\n  {source('parking_bay', ['occupied'])}\n)\n"
            "SELECT $__timeGroupAlias(s.t, $__interval), d.district AS metric,"
            f" {avg('occupied')} AS value\nFROM s JOIN devices d USING (device_id)"
            "\nWHERE d.district IN ($district)\nGROUP BY 1, 2 ORDER BY 1, 2",
            ("time", "metric", "value"),
        ),
    )  # fmt: skip
    return b
