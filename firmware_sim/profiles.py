"""City-wide shapes over time: local clock, daylight, road traffic, consumption, climate."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from itertools import accumulate
from typing import Final

from firmware_sim.scenario import City
from firmware_sim.sun import solar_events

# UTC offsets change on quarter hours at the latest (tzdata); one cache entry per 15 minutes.
_OFFSET_BUCKET_S: Final = 900
# Bounds the caches of a long run (a year of 15-minute buckets is 35,040 entries).
_CACHE_LIMIT: Final = 100_000
_DAY_S: Final = 86_400.0


class CityClock:
    """Local time and daylight of one city, cached per quarter hour and per day."""

    __slots__ = ("_lat", "_lon", "_offsets", "_suns", "_zone", "southern", "standard_offset_s")

    def __init__(self, city: City) -> None:
        self._zone = city.zone
        self._lat = city.lat
        self._lon = city.lon
        self._offsets: dict[int, float] = {}
        self._suns: dict[int, tuple[float, float, float]] = {}
        self.southern = city.lat < 0.0
        # Meters integrate consumption on standard time so their index never jumps at DST.
        self.standard_offset_s = min(
            self._offset_at(datetime(2025, 1, 15, tzinfo=UTC).timestamp()),
            self._offset_at(datetime(2025, 7, 15, tzinfo=UTC).timestamp()),
        )

    def offset_s(self, t: float) -> float:
        bucket = int(t // _OFFSET_BUCKET_S)
        offset = self._offsets.get(bucket)
        if offset is None:
            if len(self._offsets) > _CACHE_LIMIT:
                self._offsets.clear()
            offset = self._offsets[bucket] = self._offset_at(bucket * _OFFSET_BUCKET_S)
        return offset

    def local(self, t: float) -> tuple[int, float, int]:
        """(local day number since 1970-01-01, hour of day 0-24, weekday Monday=0)."""
        local_s = t + self.offset_s(t)
        day = math.floor(local_s / _DAY_S)
        # 1970-01-01 was a Thursday (weekday 3).
        return day, (local_s - day * _DAY_S) / 3600.0, (day + 3) % 7

    def sun(self, day: int) -> tuple[float, float, float]:
        """(sunrise, sunset, noon) of a local day, epoch seconds."""
        events = self._suns.get(day)
        if events is None:
            if len(self._suns) > _CACHE_LIMIT:
                self._suns.clear()
            events = self._suns[day] = solar_events(self._lat, self._lon, day)
        return events

    def is_dark(self, t: float) -> bool:
        rise, set_, _ = self.sun(self.local(t)[0])
        return t < rise or t >= set_

    def daylight(self, t: float) -> float:
        """0 at night, rising to 1 at solar noon: a cheap stand-in for the sun's elevation."""
        rise, set_, _ = self.sun(self.local(t)[0])
        if not rise <= t < set_:
            return 0.0
        if math.isinf(rise):
            return 1.0
        return math.sin(math.pi * (t - rise) / (set_ - rise))

    def season(self, t: float) -> float:
        """+1 at midsummer, -1 at midwinter (hemisphere-aware)."""
        # Day 200 of the year (mid-July) is the warmest in the northern mid-latitudes.
        phase = math.cos(2.0 * math.pi * ((t / _DAY_S) % 365.2425 - 196.0) / 365.2425)
        return -phase if self.southern else phase

    def _offset_at(self, t: float) -> float:
        offset = datetime.fromtimestamp(t, self._zone).utcoffset()
        return offset.total_seconds() if offset is not None else 0.0


def traffic_level(hour: float, weekday: int) -> float:
    """Road traffic relative to the weekday morning peak (about 1.0 at 08:00), 0.05-1.1.

    Weekdays peak at ~8h and ~18h with a midday plateau; weekends have one broad afternoon
    hump and livelier nights. Air pollution uses this same function, so they correlate.
    """
    if weekday < 5:
        level = (
            0.05
            + 0.95 * _bump(hour, 8.0, 1.0)
            + 0.85 * _bump(hour, 18.0, 1.3)
            + 0.40 * _bump(hour, 13.0, 2.6)
        )
        if weekday == 4:
            level += 0.15 * _bump(hour, 22.0, 2.0)
        return level
    weekend = 0.06 + 0.55 * _bump(hour, 14.5, 3.2) + 0.12 * _bump(hour, 23.5, 2.0)
    return weekend if weekday == 5 else 0.8 * weekend


# Hourly consumption shapes (weekday, weekend), relative; normalised to a weekly mean of 1.
_SHAPES: Final = {
    # households: morning and evening peaks, a fridge-and-standby floor at night
    "electricity": (
        (4, 3, 3, 3, 3, 4, 7, 10, 9, 7, 6, 6, 7, 6, 6, 6, 7, 9, 12, 14, 13, 11, 8, 6),
        (5, 4, 3, 3, 3, 3, 4, 6, 9, 10, 10, 10, 10, 9, 8, 8, 9, 10, 12, 13, 12, 10, 8, 6),
    ),
    # water: showers in the morning, cooking and washing in the evening, ~nothing at night
    "water": (
        (0.2, 0.1, 0.1, 0.1, 0.1, 2, 10, 14, 8, 4, 3, 4, 6, 4, 3, 3, 4, 6, 9, 10, 8, 6, 3, 1),
        (0.3, 0.2, 0.1, 0.1, 0.1, 0.3, 2, 6, 10, 12, 9, 7, 8, 6, 4, 4, 5, 6, 8, 9, 8, 6, 3, 1),
    ),
    # gas: heating and hot water
    "gas": (
        (3, 2, 2, 2, 3, 7, 12, 13, 9, 6, 5, 5, 5, 5, 5, 5, 6, 9, 12, 12, 10, 8, 6, 4),
        (3, 2, 2, 2, 2, 4, 7, 10, 12, 11, 9, 8, 7, 6, 6, 6, 7, 9, 11, 11, 10, 8, 6, 4),
    ),
    # district heating substation: smoother than gas
    "heat": (
        (6, 5, 5, 5, 6, 9, 12, 12, 10, 8, 7, 7, 7, 7, 7, 7, 8, 10, 12, 12, 11, 9, 8, 7),
        (6, 5, 5, 5, 5, 7, 9, 11, 11, 10, 9, 8, 8, 7, 7, 7, 8, 10, 11, 11, 10, 9, 8, 7),
    ),
}
# Mean consumption per hour of one household meter: 4,000 kWh, 57 m³ water (155 l/day),
# 1,000 m³ gas and 7,000 kWh heat a year.
MEAN_FLOW: Final = {"electricity": 0.46, "water": 0.0065, "gas": 0.115, "heat": 0.8}


def _week(medium: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    weekday, weekend = _SHAPES[medium]
    hours = [float(w) for w in weekday] * 5 + [float(w) for w in weekend] * 2
    mean = sum(hours) / len(hours)
    weights = tuple(h / mean for h in hours)
    return weights, (0.0, *accumulate(weights))


# Weights start on a Monday 00:00; prefix[h] is the integral over the first h hours.
_WEEK: Final = {medium: _week(medium) for medium in _SHAPES}
# Standard-time epoch seconds of Monday 1969-12-29 00:00 is -3 days.
_MONDAY_EPOCH_S: Final = -3 * _DAY_S
_WEEK_H: Final = 168


def consumption_weight(medium: str, standard_s: float) -> float:
    """Relative consumption rate at a standard-time epoch second (weekly mean 1)."""
    weights, _ = _WEEK[medium]
    hour = int(((standard_s - _MONDAY_EPOCH_S) / 3600.0) % _WEEK_H)
    return weights[hour]


def consumption_integral(medium: str, standard_s: float) -> float:
    """Hours-at-mean-rate consumed from the epoch to a standard-time epoch second."""
    weights, prefix = _WEEK[medium]
    hours = (standard_s - _MONDAY_EPOCH_S) / 3600.0
    weeks = math.floor(hours / _WEEK_H)
    into = hours - weeks * _WEEK_H
    whole = min(int(into), _WEEK_H - 1)
    return weeks * prefix[_WEEK_H] + prefix[whole] + (into - whole) * weights[whole]


def _bump(x: float, centre: float, width: float) -> float:
    z = (x - centre) / width
    return math.exp(-0.5 * z * z)
