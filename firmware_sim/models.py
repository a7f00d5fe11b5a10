"""Device behaviour: what each simulated device measures at a given reading."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Final

from devices.catalog import DEVICE_TYPES, PHASE_CODES, Kind
from firmware_sim.draws import Stream, normal, poisson, smooth, uniform
from firmware_sim.faults import (
    DRIFT_S,
    LAMP_FAILURE_S,
    STUCK_S,
    MetricValue,
    episode_start,
    signal_fault,
)
from firmware_sim.fleet import Fleet, SimDevice
from firmware_sim.meters import MeterLedger
from firmware_sim.profiles import CityClock, traffic_level

logger = logging.getLogger(__name__)

# Lamp power classes of a municipal LED stock (W) and their shares.
_LAMP_CLASSES: Final = ((40.0, 0.15), (60.0, 0.25), (80.0, 0.35), (100.0, 0.15), (150.0, 0.10))
# LED drivers lose ~10% and draw ~0.5 W standby (controller and radio).
_DRIVER_LOSS: Final = 1.1
_STANDBY_W: Final = 0.5
# French urban signals show amber for 3 s.
_AMBER_S: Final = 3.0
# How fast a drifting sensor's bias grows, per day: gases and particulates, temperature.
_DRIFT_UG_PER_DAY: Final = 2.0
_DRIFT_C_PER_DAY: Final = 0.15
_DAY_S: Final = 86_400.0


@dataclass(slots=True)
class Reading:
    """One reading's metrics, the device faults behind it and events it raises."""

    metrics: dict[str, MetricValue]
    faults: tuple[str, ...] = ()
    events: list[tuple[str, dict[str, MetricValue]]] = field(default_factory=list)


class SimContext:
    """Everything a run needs to compute readings; built once per `messages()` call."""

    __slots__ = ("clock", "dim_hours", "dim_level", "faults", "fleet", "meters")

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.faults = fleet.scenario.faults
        self.clock = CityClock(fleet.scenario.city)
        self.meters = MeterLedger(self.clock, self.faults)
        self.dim_hours = fleet.scenario.streetlights.hours()
        self.dim_level = fleet.scenario.streetlights.dim_level

    def reading(self, dev: SimDevice, k: int) -> Reading:
        """What device `dev` reports as its reading number `k`."""
        t = dev.slot_ms(k) / 1000.0
        kind = dev.device_type
        if kind == "streetlight":
            return self._streetlight(dev, t, k)
        if kind == "traffic_light":
            return self._traffic_light(dev, t, k)
        if kind == "air_sensor":
            return self._air_sensor(dev, t, k)
        if kind == "meter":
            return self._meter(dev, t, k)
        if kind == "noise_sensor":
            return self._noise_sensor(dev, t, k)
        if kind == "parking_bay":
            return self._parking_bay(dev, t)
        return _any_type(dev, k)

    def traffic(self, dev: SimDevice, t: float) -> float:
        """Road traffic in the device's district at `t`, relative to an average weekday peak."""
        _, hour, weekday = self.clock.local(t)
        return traffic_level(hour, weekday) * dev.traffic_factor

    def _streetlight(self, dev: SimDevice, t: float, k: int) -> Reading:
        failed_since = episode_start(
            dev.key, Stream.LAMP_FAILURE, t, LAMP_FAILURE_S, self.faults.lamp_failure
        )
        faults = ("lamp_failure",) if failed_since is not None else ()
        if not self.clock.is_dark(t):
            standby = _STANDBY_W * (1.0 + 0.02 * normal(dev.key, Stream.NOISE_A, k))
            return Reading(
                {"lamp_on": False, "dim_level": 0.0, "power_w": round(standby, 2)}, faults
            )
        dim = self.dim_level if self._dimmed(t) else 100.0
        power = _lamp_watts(dev) * dim / 100.0 * _DRIVER_LOSS + _STANDBY_W
        power *= 1.0 + 0.01 * normal(dev.key, Stream.NOISE_A, k)
        reading = Reading({"lamp_on": True, "dim_level": dim, "power_w": round(power, 1)}, faults)
        if failed_since is not None:
            reading.metrics["power_w"] = 0.0
            if failed_since > t - dev.interval_ms / 1000.0:
                reading.events.append(("lamp_failure", {"lamp_w": _lamp_watts(dev)}))
        return reading

    def _dimmed(self, t: float) -> bool:
        hour = self.clock.local(t)[1]
        start, end = self.dim_hours
        return (start <= hour or hour < end) if start > end else (start <= hour < end)

    def _traffic_light(self, dev: SimDevice, t: float, k: int) -> Reading:
        # Fixed-time plans: a 60-120 s cycle, 35-55% green, 3 s amber, red for the rest.
        cycle = 60.0 + 5.0 * int(uniform(dev.key, Stream.PARAM, 0) * 13)
        green = cycle * (0.35 + 0.2 * uniform(dev.key, Stream.PARAM, 1))
        position = (t + uniform(dev.key, Stream.PARAM, 2) * cycle) % cycle
        phase = "green" if position < green else "amber" if position < green + _AMBER_S else "red"
        # An intersection carries 600-1800 vehicles an hour at the weekday morning peak.
        capacity = 600.0 + 1200.0 * uniform(dev.key, Stream.PARAM, 3)
        lam = capacity * self.traffic(dev, t) * dev.interval_ms / 3_600_000.0
        reading = Reading(
            {"phase": phase, "vehicle_count": poisson(dev.key, Stream.NOISE_A, k, lam)}
        )
        fault = signal_fault(dev.key, t, self.faults)
        if fault is not None:
            mode, since = fault
            reading.metrics["phase"] = mode
            reading.faults = (mode,)
            if since > t - dev.interval_ms / 1000.0:
                reading.events.append(("signal_fault", {"mode": mode}))
        if dev.enum_codes:
            reading.metrics["phase"] = PHASE_CODES[str(reading.metrics["phase"])]
        return reading

    def _air_sensor(self, dev: SimDevice, t: float, k: int) -> Reading:
        stuck_since = episode_start(dev.key, Stream.STUCK, t, STUCK_S, self.faults.stuck_value)
        if stuck_since is not None:
            first = dev.first_k_at_or_after(math.ceil(stuck_since * 1000.0))
            if first < k:
                frozen = self._air_sensor(dev, dev.slot_ms(first) / 1000.0, first).metrics
                return Reading(frozen, ("stuck",))
        metrics = self._air_values(dev, t, k)
        drift_since = episode_start(dev.key, Stream.DRIFT, t, DRIFT_S, self.faults.sensor_drift)
        if drift_since is None:
            return Reading(metrics)
        days = (t - drift_since) / _DAY_S
        for name in ("pm25", "pm10", "no2", "o3"):
            metrics[name] = _clip(float(metrics[name]) + _DRIFT_UG_PER_DAY * days, 0.0, 2000.0)
        temp = float(metrics["temperature_c"]) + _DRIFT_C_PER_DAY * days
        metrics["temperature_c"] = _clip(temp, -50.0, 70.0)
        return Reading(metrics, ("drift",))

    def _air_values(self, dev: SimDevice, t: float, k: int) -> dict[str, MetricValue]:
        city, key = self.fleet.city_key, dev.key
        _, hour, _ = self.clock.local(t)
        season = self.clock.season(t)
        # A mid-latitude climate: 3 °C in January, 22 °C in July, 4-7 °C from dawn to 15h.
        mean_c = 12.5 + 9.5 * season
        swing = (4.5 + 2.0 * season) * math.cos(2.0 * math.pi * (hour - 15.0) / 24.0)
        weather = 3.5 * smooth(city, Stream.WEATHER_TEMP, t, 36 * 3600.0)
        bias_c = 0.4 * (2.0 * uniform(key, Stream.PARAM, 0) - 1.0)
        temp = mean_c + swing + weather + bias_c + 0.2 * normal(key, Stream.NOISE_A, k)
        humidity = 72.0 - 2.5 * swing + 12.0 * smooth(city, Stream.WEATHER_HUMIDITY, t, 24 * 3600.0)
        humidity += 1.5 * normal(key, Stream.NOISE_B, k)
        # Still air traps pollution for days; winter adds wood and gas heating.
        stagnation = 0.5 + 0.5 * smooth(city, Stream.STAGNATION, t, 48 * 3600.0)
        heating = max(0.0, -season)
        traffic = self.traffic(dev, t)
        no2 = 8.0 + 38.0 * traffic + 14.0 * stagnation + 6.0 * heating
        no2 += 2.5 * normal(key, Stream.NOISE_C, k)
        pm25 = 5.0 + 7.0 * traffic + 12.0 * stagnation + 10.0 * heating
        pm25 += 1.5 * normal(key, Stream.NOISE_D, k)
        pm10 = 1.45 * pm25 + 3.0 + 4.0 * traffic + 2.0 * normal(key, Stream.NOISE_E, k)
        # Ozone forms in sunlight and is eaten by fresh NO (titration): it anticorrelates with NO2.
        o3 = 25.0 + 55.0 * self.clock.daylight(t) * (0.6 + 0.4 * season) - 0.35 * (no2 - 8.0)
        o3 += 3.0 * normal(key, Stream.NOISE_F, k)
        return {
            "pm25": _clip(pm25, 0.0, 2000.0),
            "pm10": _clip(pm10, 0.0, 2000.0),
            "no2": _clip(no2, 0.0, 2000.0),
            "o3": _clip(o3, 0.0, 2000.0),
            "temperature_c": _clip(temp, -50.0, 70.0),
            "humidity_pct": _clip(humidity, 5.0, 100.0),
        }

    def _meter(self, dev: SimDevice, t: float, k: int) -> Reading:
        metrics, faults = self.meters.reading(dev, t, k)
        reading = Reading(metrics, tuple(faults))
        start, _ = self.meters.life(dev, t)
        installed = dev.record.installed_at
        replaced = installed is not None and start > installed.timestamp()
        if replaced and start > t - dev.interval_ms / 1000.0:
            reading.events.append(("meter_replaced", {"index": metrics["index"]}))
        return reading

    def _noise_sensor(self, dev: SimDevice, t: float, k: int) -> Reading:
        # Road noise follows traffic: LAeq is ~66 dB(A) at a busy street's weekday peak and
        # ~10·log10 of the traffic share lower off it (halving traffic is -3 dB), floored by
        # the city's background (~45 dB(A) at night); sites differ by ±4 dB (distance, surface).
        site = 8.0 * uniform(dev.key, Stream.PARAM, 0) - 4.0
        road = 66.0 + 10.0 * math.log10(max(self.traffic(dev, t), 0.01))
        laeq = 10.0 * math.log10(10 ** (road / 10.0) + 10 ** (45.0 / 10.0)) + site
        laeq += 1.5 * normal(dev.key, Stream.NOISE_A, k)
        # The loudest second (a bus, a horn, a scooter) is 8-25 dB above the interval's LAeq.
        lamax = laeq + 8.0 + 17.0 * uniform(dev.key, Stream.NOISE_B, k) ** 2
        return Reading({"laeq": _clip(laeq, 0.0, 150.0), "lamax": _clip(lamax, 0.0, 150.0)})

    def _parking_bay(self, dev: SimDevice, t: float) -> Reading:
        # Bays fill with traffic (commuters, shoppers) and stay taken for hours: occupancy is
        # smooth noise with knots every 90 min held against a demand of 30-95%.
        demand = 0.3 + 0.6 * min(1.0, self.traffic(dev, t))
        level = 0.5 + 0.5 * smooth(dev.key, Stream.NOISE_C, t, 5400.0)
        return Reading({"occupied": level < demand})


def _any_type(dev: SimDevice, k: int) -> Reading:
    """A type of the operator's catalog with no model here: each metric drawn in its range."""
    metrics: dict[str, MetricValue] = {}
    for i, m in enumerate(DEVICE_TYPES[dev.device_type].metrics):
        u = uniform(dev.key, Stream.NOISE_D, k * 64 + i)
        if m.kind is Kind.BOOL:
            metrics[m.name] = u < 0.5
        elif m.kind is Kind.ENUM:
            codes = list(m.codes)
            metrics[m.name] = codes[int(u * len(codes))]
        else:
            lo = m.minimum if math.isfinite(m.minimum) else 0.0
            hi = m.maximum if math.isfinite(m.maximum) else lo + 100.0
            value = lo + u * (hi - lo)
            metrics[m.name] = math.floor(value) if m.kind is Kind.WHOLE else round(value, 2)
    return Reading(metrics)


def _lamp_watts(dev: SimDevice) -> float:
    u = uniform(dev.key, Stream.PARAM, 0)
    for watts, share in _LAMP_CLASSES:
        if u < share:
            return watts
        u -= share
    return _LAMP_CLASSES[-1][0]


def _clip(value: float, low: float, high: float) -> float:
    return round(min(high, max(low, value)), 1)
