"""Record an ingest process's counters and the city's presence figures in the store every 10 s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from prometheus_client import CollectorRegistry

from store.platform_stats import REASONS, IngestWindow, prune, record_fleet, record_ingest

logger = logging.getLogger(__name__)

# The platform dashboard's resolution: fine enough to see a stall, ~8,640 rows a day per
# ingest process.
EVERY: Final = timedelta(seconds=10)
# Figures older than this are pruned (once an hour): a month of health history.
KEEP: Final = timedelta(days=30)
_PRUNE_EVERY_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Counters:
    """A reading of an ingest process's Prometheus counters (totals since it started)."""

    received: float
    stored: float
    duplicates: float
    rejected: dict[str, float]
    batches: float
    batch_seconds: float
    pending: float
    store_up: bool

    @classmethod
    def zero(cls) -> Counters:
        """The counters of a process that has done nothing yet."""
        return cls(0.0, 0.0, 0.0, dict.fromkeys(REASONS, 0.0), 0.0, 0.0, 0.0, False)

    @classmethod
    def read(cls, registry: CollectorRegistry) -> Counters:
        def value(name: str, labels: dict[str, str] | None = None) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        return cls(
            received=value("silobreak_ingest_received_total"),
            stored=value("silobreak_ingest_stored_total"),
            duplicates=value("silobreak_ingest_duplicates_total"),
            rejected={r: value("silobreak_ingest_rejected_total", {"reason": r}) for r in REASONS},
            batches=value("silobreak_ingest_batch_seconds_count"),
            batch_seconds=value("silobreak_ingest_batch_seconds_sum"),
            pending=value("silobreak_ingest_pending"),
            # Until the first commit the gauge reads 0: not up yet, and the row says so.
            store_up=value("silobreak_ingest_store_up") == 1.0,
        )


def window(
    before: Counters, after: Counters, *, source: str, at: datetime, span: timedelta
) -> IngestWindow:
    """What happened between two readings of the counters."""
    batches = int(after.batches - before.batches)
    commit = (after.batch_seconds - before.batch_seconds) / batches if batches else None
    return IngestWindow(
        time=at,
        source=source,
        window=span,
        received=int(after.received - before.received),
        stored=int(after.stored - before.stored),
        duplicates=int(after.duplicates - before.duplicates),
        rejected={r: int(after.rejected[r] - before.rejected[r]) for r in REASONS},
        pending=int(after.pending),
        batches=batches,
        commit_s=commit,
        store_up=after.store_up,
    )


class PlatformRecorder:
    """Writes a platform_stats row for one ingest process, and the city's row, every 10 s."""

    def __init__(
        self,
        database_url: str,
        *,
        source: str,
        registry: CollectorRegistry,
        every: timedelta = EVERY,
        keep: timedelta = KEEP,
    ) -> None:
        self._url = database_url
        self._source = source
        self._registry = registry
        self._every = every.total_seconds()
        self._keep = keep
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Record at every 10-second boundary of the wall clock until `stop` is set."""
        # From zero: what the process did before the recorder started is in the first row.
        last = Counters.zero()
        last_at = datetime.now(UTC)
        next_prune = 0.0
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._every - time.time() % self._every)
                if stop.is_set():
                    break
                at = datetime.fromtimestamp(round(time.time() / self._every) * self._every, UTC)
                now = Counters.read(self._registry)
                span = max(at - last_at, timedelta(milliseconds=1))
                row = window(last, now, source=self._source, at=at, span=span)
                if await self._write(row, prune_now=time.monotonic() >= next_prune):
                    # Counts of a failed write stay in the next window: none is lost.
                    last, last_at = now, at
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + _PRUNE_EVERY_S
        finally:
            if self._conn is not None:
                await self._conn.close()

    async def _write(self, row: IngestWindow, *, prune_now: bool) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, application_name="silobreak-recorder"
                )
            await record_ingest(self._conn, row)
            await record_fleet(self._conn, at=row.time, window=timedelta(seconds=self._every))
            if prune_now:
                await prune(self._conn, before=row.time - self._keep)
        except psycopg.Error as exc:
            logger.warning("platform figures not recorded (store unavailable): %s", exc)
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            return False
        return True
