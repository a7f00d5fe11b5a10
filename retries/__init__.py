"""One retry backoff for every loop that retries: exponential, capped, jittered.

The ground floor, as `mqtt/` is: nothing here imports another project package, so every
package may import it. A loop that retries keeps a `Backoff` (its attempts so far) and asks
it how long to wait; a policy is data, so a loop's first delay and cap sit next to the
reason for them, in the module that retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class RandomSource(Protocol):
    """What the jitter draws from: `random.Random` (seeded in tests and the simulator)."""

    def uniform(self, a: float, b: float, /) -> float: ...


# Jitter only, never secrecy; one generator for the process unless a caller brings its own.
_RANDOM: RandomSource = random.Random()  # noqa: S311


@dataclass(frozen=True, slots=True)
class Policy:
    """Delays that start at `first` seconds, double each retry up to `cap`, and are each
    drawn from the upper `jitter` fraction of that (0.5: between half and all of it), so
    that many clients cut off at once do not come back in lockstep. `give_up`: seconds
    into a run of retries (see `Backoff.exhausted`) past which the caller stops retrying
    (None: never)."""

    first: float
    cap: float
    jitter: float = 0.5
    give_up: float | None = None

    def __post_init__(self) -> None:
        if not (self.first > 0 and self.cap > 0):
            raise ValueError(f"backoff: delays must be positive, got {self.first} and {self.cap}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff: jitter is a fraction in [0, 1], got {self.jitter}")

    def ceiling(self, attempt: int) -> float:
        """The longest delay before retry number `attempt` (1-based), before jitter."""
        # Past 2**64 the cap has long been reached; the bound keeps the float finite.
        return min(self.first * 2.0 ** min(attempt - 1, 64), self.cap)

    def delay(self, attempt: int, rng: RandomSource = _RANDOM) -> float:
        """Seconds to wait before retry number `attempt` (1-based), jittered."""
        top = self.ceiling(attempt)
        if not self.jitter:
            return top
        return rng.uniform(top * (1 - self.jitter), top)


class Backoff:
    """The retries of one loop: `next()` gives the delay before the next try and counts it;
    `reset()` after a success starts again from `first`."""

    def __init__(
        self,
        policy: Policy,
        *,
        rng: RandomSource = _RANDOM,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.attempts = 0  # retries since the last success
        self._rng = rng
        self._clock = clock
        # The give-up clock runs from construction (a loop that makes one Backoff per job
        # counts the first try) or, after a reset, from the next failure.
        self._since: float | None = clock()

    def next(self) -> float:
        """The delay before the next retry, counted as one more attempt."""
        if self._since is None:
            self._since = self._clock()
        self.attempts += 1
        return self.policy.delay(self.attempts, self._rng)

    def reset(self) -> None:
        self.attempts = 0
        self._since = None

    @property
    def exhausted(self) -> bool:
        """Whether more than `give_up` seconds have passed since this run of retries began."""
        if self.policy.give_up is None or self._since is None:
            return False
        return self._clock() - self._since > self.policy.give_up

    async def sleep(self, stop: asyncio.Event | None = None) -> float:
        """Wait the next delay, or less if `stop` is set meanwhile; returns the delay."""
        delay = self.next()
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        return delay
