"""NOAA sunrise and sunset."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from firmware_sim import sun_times

PARIS = (48.8566, 2.3522)


@pytest.mark.parametrize(
    ("day", "sunrise_utc", "sunset_utc"),
    [
        # Almanac times for Paris (timeanddate.com), converted to UTC.
        (date(2026, 6, 21), "03:47", "19:58"),
        (date(2026, 12, 21), "07:42", "15:56"),
    ],
)
def test_sunrise_and_sunset_match_the_almanac_within_three_minutes(
    day: date, sunrise_utc: str, sunset_utc: str
) -> None:
    times = sun_times(*PARIS, day)

    def at(hhmm: str) -> datetime:
        hours, minutes = map(int, hhmm.split(":"))
        return datetime(day.year, day.month, day.day, hours, minutes, tzinfo=UTC)

    assert times.sunrise is not None
    assert times.sunset is not None
    assert abs(times.sunrise - at(sunrise_utc)) < timedelta(minutes=3)
    assert abs(times.sunset - at(sunset_utc)) < timedelta(minutes=3)
    assert times.sunrise < times.noon < times.sunset


def test_polar_day_and_polar_night_have_no_sunrise() -> None:
    summer = sun_times(78.2, 15.6, date(2026, 6, 21))
    winter = sun_times(78.2, 15.6, date(2026, 12, 21))
    assert summer.sunrise is None and summer.always_up
    assert winter.sunrise is None and not winter.always_up


@pytest.mark.parametrize("lat", [-45.0, 0.0, 45.188, 60.0])
def test_equinox_days_last_twelve_hours_plus_refraction(lat: float) -> None:
    times = sun_times(lat, 5.724, date(2026, 3, 20))
    assert times.sunrise is not None
    assert times.sunset is not None
    # Refraction and the sun's radius lengthen the day by 6-20 minutes at these latitudes.
    assert timedelta(hours=12) < times.sunset - times.sunrise < timedelta(hours=12, minutes=20)
