"""Sunrise, sunset and solar noon from the NOAA general solar position equations."""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Final

# The sun's upper limb on the horizon with standard refraction (NOAA's "official" zenith).
OFFICIAL_ZENITH_DEG: Final = 90.833
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class SunTimes:
    """One day's sun events in UTC; sunrise/sunset are None during polar day or night."""

    sunrise: datetime | None
    sunset: datetime | None
    noon: datetime
    always_up: bool = False


def sun_times(
    lat: float, lon: float, day: date, zenith_deg: float = OFFICIAL_ZENITH_DEG
) -> SunTimes:
    """Sunrise, sunset and solar noon on `day` at (lat, lon) (degrees, east positive)."""
    rise, set_, noon = solar_events(lat, lon, day.toordinal() - _EPOCH_ORDINAL, zenith_deg)

    def at(t: float) -> datetime | None:
        return datetime.fromtimestamp(t, UTC) if math.isfinite(t) and t != noon else None

    return SunTimes(
        sunrise=at(rise),
        sunset=at(set_),
        noon=datetime.fromtimestamp(noon, UTC),
        always_up=math.isinf(rise),
    )


def solar_events(
    lat: float, lon: float, day: int, zenith_deg: float = OFFICIAL_ZENITH_DEG
) -> tuple[float, float, float]:
    """(sunrise, sunset, noon) in epoch seconds for the calendar day `day` days after 1970-01-01.

    The sun is up when sunrise <= t < sunset: polar day gives (-inf, inf, noon), polar
    night gives (noon, noon, noon).
    """
    d = date.fromordinal(_EPOCH_ORDINAL + day)
    year_days = 366 if calendar.isleap(d.year) else 365
    doy = d.timetuple().tm_yday
    # NOAA: fractional year in radians, evaluated at noon of the day.
    g = 2.0 * math.pi / year_days * (doy - 1)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    midnight = day * 86400.0
    noon = midnight + (720.0 - 4.0 * lon - eqtime) * 60.0
    phi = math.radians(lat)
    cos_ha = math.cos(math.radians(zenith_deg)) / (math.cos(phi) * math.cos(decl)) - math.tan(
        phi
    ) * math.tan(decl)
    if cos_ha <= -1.0:
        return -math.inf, math.inf, noon
    if cos_ha >= 1.0:
        return noon, noon, noon
    ha_minutes = 4.0 * math.degrees(math.acos(cos_ha))
    return noon - ha_minutes * 60.0, noon + ha_minutes * 60.0, noon
