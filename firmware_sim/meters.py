"""Utility meters: a cumulative index that integrates the flow, leaks, and replacements."""

from __future__ import annotations

import math
from typing import Final

from firmware_sim.draws import Stream, normal, uniform
from firmware_sim.faults import (
    LEAK_S,
    REPLACEMENT_ROUND_S,
    MetricValue,
    episode_shift,
    replacement_in_round,
)
from firmware_sim.fleet import SimDevice
from firmware_sim.profiles import MEAN_FLOW, CityClock, consumption_integral, consumption_weight
from firmware_sim.scenario import Faults

# A meter fitted with its radio module had already run for up to this many years.
_PRIOR_YEARS: Final = 3.0
_HOURS_PER_YEAR: Final = 8766.0
# A meter register shows 3 decimals (Wh, litres); flow needs one more for a dripping tap.
_INDEX_DIGITS: Final = 3
_FLOW_DIGITS: Final = 4


class MeterLedger:
    """Index arithmetic for the meters of one run; caches only speed up pure functions."""

    __slots__ = ("_clock", "_faults", "_leak_cache", "_reset_cache")

    def __init__(self, clock: CityClock, faults: Faults) -> None:
        self._clock = clock
        self._faults = faults
        # device index -> (round number, last replacement strictly before that round)
        self._reset_cache: dict[int, tuple[int, tuple[float, float] | None]] = {}
        # device index -> (life start, leak window, leaked volume before that window)
        self._leak_cache: dict[int, tuple[float, int, float]] = {}

    def reading(self, dev: SimDevice, t: float, k: int) -> tuple[dict[str, MetricValue], list[str]]:
        """The index and flow of a meter at `t` (reading k), and its active faults."""
        medium = dev.record.medium or "electricity"
        scale = _scale(dev)
        mean = MEAN_FLOW[medium] * scale
        life_start, life_base = self.life(dev, t)
        offset = self._clock.standard_offset_s
        consumed = consumption_integral(medium, t + offset) - consumption_integral(
            medium, life_start + offset
        )
        index = life_base + mean * consumed + self.leaked(dev, life_start, t)
        flow = mean * consumption_weight(medium, t + offset)
        flow = max(0.0, flow * (1.0 + 0.15 * normal(dev.key, Stream.NOISE_A, k)))
        faults: list[str] = []
        if self.leaking(dev, t):
            flow += _leak_rate(dev)
            faults.append("leak")
        metrics: dict[str, MetricValue] = {
            "index": round(index, _INDEX_DIGITS),
            "flow": round(flow, _FLOW_DIGITS),
        }
        return metrics, faults

    def life(self, dev: SimDevice, t: float) -> tuple[float, float]:
        """(start, index at start) of the meter in place at `t`: installation or last swap."""
        installed = _installed(dev)
        round_now = math.floor(t / REPLACEMENT_ROUND_S)
        swapped = replacement_in_round(dev.key, round_now, self._faults.meter_replacement)
        if swapped is not None and installed < swapped <= t:
            return swapped, _fresh_index(dev, swapped)
        earlier = self._last_before_round(dev, round_now, installed)
        if earlier is not None:
            return earlier
        return installed, _prior_index(dev)

    def leaked(self, dev: SimDevice, start: float, t: float) -> float:
        """Volume leaked between `start` and `t`, over all leak episodes in between."""
        rate = self._faults.meter_leak
        if rate <= 0.0 or t <= start:
            return 0.0
        shift = episode_shift(dev.key, Stream.LEAK, LEAK_S)
        first = math.floor((start - shift) / LEAK_S)
        last = math.floor((t - shift) / LEAK_S)
        window, total = first, 0.0
        cached = self._leak_cache.get(dev.index)
        if cached is not None and cached[0] == start and first <= cached[1] <= last:
            _, window, total = cached
        while window < last:
            total += self._leak_in(dev, window, start, shift)
            window += 1
        self._leak_cache[dev.index] = (start, window, total)
        if uniform(dev.key, Stream.LEAK, last) < rate:
            total += (t - max(start, shift + last * LEAK_S)) * _leak_rate(dev) / 3600.0
        return total

    def leaking(self, dev: SimDevice, t: float) -> bool:
        shift = episode_shift(dev.key, Stream.LEAK, LEAK_S)
        window = math.floor((t - shift) / LEAK_S)
        return uniform(dev.key, Stream.LEAK, window) < self._faults.meter_leak

    def _leak_in(self, dev: SimDevice, window: int, start: float, shift: float) -> float:
        if uniform(dev.key, Stream.LEAK, window) >= self._faults.meter_leak:
            return 0.0
        begin = max(start, shift + window * LEAK_S)
        end = shift + (window + 1) * LEAK_S
        return max(0.0, end - begin) * _leak_rate(dev) / 3600.0

    def _last_before_round(
        self, dev: SimDevice, round_now: int, installed: float
    ) -> tuple[float, float] | None:
        cached = self._reset_cache.get(dev.index)
        if cached is not None and cached[0] == round_now:
            return cached[1]
        floor_round = math.floor(installed / REPLACEMENT_ROUND_S)
        stop = cached[0] - 1 if cached is not None and cached[0] < round_now else floor_round - 1
        found: tuple[float, float] | None = None
        for r in range(round_now - 1, stop, -1):
            swapped = replacement_in_round(dev.key, r, self._faults.meter_replacement)
            if swapped is not None and swapped > installed:
                found = (swapped, _fresh_index(dev, swapped))
                break
        else:
            if cached is not None and cached[0] < round_now:
                found = cached[1]
        self._reset_cache[dev.index] = (round_now, found)
        return found


def _installed(dev: SimDevice) -> float:
    installed = dev.record.installed_at
    return installed.timestamp() if installed is not None else 0.0


def _scale(dev: SimDevice) -> float:
    # Households differ by a lognormal factor (median 1, most between 0.4x and 2.7x).
    return min(4.0, max(0.25, math.exp(0.5 * normal(dev.key, Stream.PARAM, 0))))


def _leak_rate(dev: SimDevice) -> float:
    medium = dev.record.medium or "electricity"
    return MEAN_FLOW[medium] * (1.0 + 4.0 * uniform(dev.key, Stream.PARAM, 3))


def _prior_index(dev: SimDevice) -> float:
    medium = dev.record.medium or "electricity"
    years = _PRIOR_YEARS * uniform(dev.key, Stream.PARAM, 4)
    return MEAN_FLOW[medium] * _scale(dev) * _HOURS_PER_YEAR * years


def _fresh_index(dev: SimDevice, when: float) -> float:
    # A new meter leaves the factory with a test reading of a few units at most.
    return uniform(dev.key, Stream.PARAM, 5 + int(when) % 1000) * 2.0
