"""Firmware and hardware faults: when a device is faulty, and how a payload goes wrong."""

from __future__ import annotations

import math
from typing import Final, Literal

from devices.catalog import DEVICE_TYPES
from firmware_sim.draws import Stream, uniform
from firmware_sim.scenario import Faults

MetricValue = float | int | bool | str
MessageFault = Literal["ok", "malformed", "out_of_range"]

# Episode lengths: a dead lamp waits ~3 days for a crew; a signal fault is cleared within
# a couple of hours; a drifting sensor is recalibrated on a fortnightly round; a stuck
# sensor is rebooted by its watchdog within hours; a leak is noticed within a week.
LAMP_FAILURE_S: Final = 3 * 86_400.0
SIGNAL_FAULT_S: Final = 2 * 3_600.0
DRIFT_S: Final = 14 * 86_400.0
STUCK_S: Final = 6 * 3_600.0
LEAK_S: Final = 7 * 86_400.0
# Meters are swapped on a monthly round; at most one replacement per meter per round.
REPLACEMENT_ROUND_S: Final = 30 * 86_400.0
_EPOCH_DAY_S: Final = 86_400.0

# Out-of-range values per device type: (metric, bad value), one picked per faulty reading.
_OUT_OF_RANGE: Final[dict[str, tuple[tuple[str, MetricValue], ...]]] = {
    "streetlight": (("dim_level", 140.0), ("power_w", -5.0), ("power_w", 1800.0)),
    "traffic_light": (("vehicle_count", -3), ("phase", 9)),
    "air_sensor": (
        ("pm25", -4.0),
        ("no2", 2600.0),
        ("temperature_c", 95.0),
        ("humidity_pct", 130.0),
    ),
    # flow, not index: an out-of-range index would also break the index's monotony
    "meter": (("flow", -0.5),),
    "noise_sensor": (("laeq", -3.0), ("lamax", 180.0)),
    "parking_bay": (("occupied", 2),),
}
_GARBAGE: Final = (b"\x00\xff\xfeERR sensor bus timeout", b"AT+CSQ\r\n+CSQ: 99,99\r\nOK")
_NOT_AN_OBJECT: Final = (b'"reboot"', b"null", b"42")


def episode_start(key: int, stream: int, t: float, length_s: float, rate: float) -> float | None:
    """Start of the fault episode `t` falls in, or None when the device is healthy then.

    Time is cut into windows of `length_s` (shifted per device, so faults do not start
    city-wide at once); each window is faulty with probability `rate`.
    """
    if rate <= 0.0:
        return None
    shift = episode_shift(key, stream, length_s)
    window = math.floor((t - shift) / length_s)
    if uniform(key, stream, window) < rate:
        return shift + window * length_s
    return None


def episode_shift(key: int, stream: int, length_s: float) -> float:
    """Where this device's fault windows of one kind start, within [0, length_s)."""
    return uniform(key, Stream.EPISODE_PHASE, stream) * length_s


def signal_fault(
    key: int, t: float, faults: Faults
) -> tuple[Literal["flashing_amber", "off"], float] | None:
    """The traffic signal's fault mode at `t` and when it began, if any.

    One draw per window decides both modes, so they exclude each other.
    """
    shift = episode_shift(key, Stream.SIGNAL_FAULT, SIGNAL_FAULT_S)
    window = math.floor((t - shift) / SIGNAL_FAULT_S)
    u = uniform(key, Stream.SIGNAL_FAULT, window)
    start = shift + window * SIGNAL_FAULT_S
    if u < faults.traffic_flashing:
        return "flashing_amber", start
    if u < faults.traffic_flashing + faults.traffic_dark:
        return "off", start
    return None


def replacement_in_round(key: int, round_no: int, per_year: float) -> float | None:
    """When the meter was replaced during replacement round `round_no`, if it was."""
    probability = min(1.0, per_year * REPLACEMENT_ROUND_S / (365.0 * _EPOCH_DAY_S))
    if uniform(key, Stream.REPLACEMENT, round_no) >= probability:
        return None
    into = uniform(key, Stream.REPLACEMENT_AT, round_no) * REPLACEMENT_ROUND_S
    return round_no * REPLACEMENT_ROUND_S + into


def message_fault(key: int, k: int, faults: Faults) -> MessageFault:
    """Whether reading `k` of a device goes out broken, out of range, or fine."""
    u = uniform(key, Stream.MESSAGE_FAULT, k)
    if u < faults.malformed_payload:
        return "malformed"
    if u < faults.malformed_payload + faults.out_of_range:
        return "out_of_range"
    return "ok"


def is_duplicated(key: int, k: int, faults: Faults) -> bool:
    return uniform(key, Stream.DUPLICATE, k) < faults.duplicate_publish


def out_of_range(
    key: int, k: int, device_type: str, metrics: dict[str, MetricValue]
) -> dict[str, MetricValue]:
    """The metrics with one value pushed outside its catalog range."""
    # A type of the operator's catalog: its first metric as text, wrong for every kind.
    first = (DEVICE_TYPES[device_type].metrics[0].name, "n/a")
    choices = _OUT_OF_RANGE.get(device_type, (first,))
    name, value = choices[int(uniform(key, Stream.OUT_OF_RANGE_KIND, k) * len(choices))]
    return {**metrics, name: value}


def malform(key: int, k: int, payload: bytes) -> bytes:
    """A broken payload: truncated (most often, a dropped radio frame), garbage, or a bare value."""
    u = uniform(key, Stream.MALFORM_KIND, k)
    if u < 0.7:
        # Any strict prefix of a JSON object or array is invalid: the closing bracket is last.
        cut = int(uniform(key, Stream.MALFORM_CUT, k) * len(payload))
        return payload[:cut]
    if u < 0.85:
        return _GARBAGE[k % len(_GARBAGE)]
    return _NOT_AN_OBJECT[k % len(_NOT_AN_OBJECT)]
