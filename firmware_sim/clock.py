"""The simulated clock: runs `speed` times faster than real time until it catches up with now."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from firmware_sim.errors import SimError


class SimClock:
    """Simulated time: start + speed x elapsed real time, but never ahead of real now.

    Started in the past with speed > 1 it catches up with real time and then runs at real
    time, so no simulated timestamp is ever later than the wall clock.
    """

    __slots__ = ("_real0", "_real_now", "_sim0", "speed")

    def __init__(
        self,
        start: datetime | None = None,
        speed: float = 1.0,
        *,
        real_now: Callable[[], float] = time.time,
    ) -> None:
        if not speed > 0.0:
            raise SimError(f"--speed must be positive, got {speed}")
        if start is not None and start.tzinfo is None:
            raise SimError("the simulation start needs a UTC offset")
        self._real_now = real_now
        self._real0 = real_now()
        self._sim0 = self._real0 if start is None else min(start.timestamp(), self._real0)
        self.speed = speed

    def now(self) -> float:
        """Simulated epoch seconds."""
        real = self._real_now()
        return min(self._sim0 + (real - self._real0) * self.speed, real)

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    @property
    def start(self) -> datetime:
        return datetime.fromtimestamp(self._sim0, UTC)

    def real_time_of(self, sim_t: float) -> float:
        """The real epoch second at which simulated time reaches `sim_t`."""
        return max(self._real0 + (sim_t - self._sim0) / self.speed, sim_t)
