"""Stateless pseudo-random draws keyed by (device, purpose, index), so models stay pure."""

from __future__ import annotations

import hashlib
import math
from typing import Final

_MASK: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
_TO_UNIT: Final = 2.0**-53
_STREAM_MUL: Final = 0xD6E8FEB86659FD93


def device_key(seed: int, device_id: str) -> int:
    """A 64-bit key for one device under one seed; every draw of that device derives from it."""
    digest = hashlib.blake2b(f"{seed}\x00{device_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def uniform(key: int, stream: int, n: int) -> float:
    """A uniform draw in [0, 1) for draw number `n` of purpose `stream` of `key`."""
    # splitmix64's finaliser over the key mixed with odd multiples of stream and n: one
    # round, inlined, because it is ~40% of the generator's time (about 13 draws a message).
    x = (key ^ (stream * _STREAM_MUL) ^ (n * _GOLDEN) + _GOLDEN) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return ((x ^ (x >> 31)) >> 11) * _TO_UNIT


def normal(key: int, stream: int, n: int) -> float:
    """A standard normal draw (Box-Muller on two uniforms of the same stream)."""
    u1 = uniform(key, stream, 2 * n) or _TO_UNIT
    u2 = uniform(key, stream, 2 * n + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def smooth(key: int, stream: int, t: float, period: float) -> float:
    """Value noise in [-1, 1] that varies smoothly with `t` (knots every `period` seconds)."""
    x = t / period
    i = math.floor(x)
    f = x - i
    a = 2.0 * uniform(key, stream, i) - 1.0
    b = 2.0 * uniform(key, stream, i + 1) - 1.0
    return a + (b - a) * f * f * (3.0 - 2.0 * f)


def poisson(key: int, stream: int, n: int, lam: float) -> int:
    """A Poisson draw: exact inversion for small means, a rounded normal for large ones."""
    if lam <= 0.0:
        return 0
    # Past a mean of 30 the normal approximation is within a percent and costs one draw.
    if lam > 30.0:
        return max(0, round(lam + math.sqrt(lam) * normal(key, stream, n)))
    u = uniform(key, stream, n)
    k = 0
    p = math.exp(-lam)
    cumulative = p
    while u > cumulative and k < 1000:
        k += 1
        p *= lam / k
        cumulative += p
    return k


class Stream:
    """Purposes of draws; each device draws from each purpose independently."""

    PLACE_LAT: Final = 1
    PLACE_LON: Final = 2
    GRID_OFFSET: Final = 3
    JITTER: Final = 4
    SENML: Final = 5
    ENUM_CODES: Final = 6
    SKEW: Final = 7
    INSTALL: Final = 8
    PARAM: Final = 9
    MESSAGE_FAULT: Final = 10
    MALFORM_KIND: Final = 11
    MALFORM_CUT: Final = 12
    DUPLICATE: Final = 13
    OUT_OF_RANGE_KIND: Final = 14
    LAMP_FAILURE: Final = 15
    SIGNAL_FAULT: Final = 16
    DRIFT: Final = 17
    STUCK: Final = 18
    LEAK: Final = 19
    REPLACEMENT: Final = 20
    REPLACEMENT_AT: Final = 21
    NOISE_A: Final = 22
    NOISE_B: Final = 23
    NOISE_C: Final = 24
    NOISE_D: Final = 25
    NOISE_E: Final = 26
    NOISE_F: Final = 27
    WEATHER_TEMP: Final = 28
    WEATHER_HUMIDITY: Final = 29
    STAGNATION: Final = 30
    EPISODE_PHASE: Final = 31
