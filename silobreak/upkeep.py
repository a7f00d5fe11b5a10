"""The store's background work for a running platform: maintenance rounds and the mirror."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import psycopg

from silobreak.settings import Settings, mirror_config
from store.errors import StoreError
from store.mirror import InfluxMirror

if TYPE_CHECKING:
    from store.maintain import MaintenanceReport

logger = logging.getLogger(__name__)


async def run_upkeep(settings: Settings, stop: asyncio.Event) -> None:
    """Maintain every `maintenance_interval`, and mirror to InfluxDB when one is configured,
    until `stop` is set. A database that is down is waited for, never fatal."""
    tasks = [asyncio.create_task(maintenance_loop(settings, stop), name="store-maintenance")]
    if settings.influx_url is not None:
        mirror = InfluxMirror(settings.database_url, mirror_config(settings))
        tasks.append(asyncio.create_task(mirror.run(stop), name="influx-mirror"))
    await asyncio.gather(*tasks)


async def maintenance_loop(settings: Settings, stop: asyncio.Event) -> None:
    interval = settings.maintenance_interval.total_seconds()
    while not stop.is_set():
        try:
            report, line = await asyncio.to_thread(maintain_round, settings)
        except (StoreError, psycopg.Error) as exc:
            logger.warning("maintenance skipped: %s", str(exc).strip().splitlines()[0])
        else:
            logger.log(logging.WARNING if report.failed_jobs else logging.INFO, "%s", line)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def maintain_once(settings: Settings, *, retention: bool = True) -> str:
    """One round of `store.maintain.maintain`, as one line for the log."""
    return maintain_round(settings, retention=retention)[1]


def maintain_round(settings: Settings, *, retention: bool = True) -> tuple[MaintenanceReport, str]:
    """One round of `store.maintain.maintain`: its report, and that as one line."""
    from store.maintain import maintain  # noqa: PLC0415

    started = time.perf_counter()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        report = maintain(conn, settle=settings.rollup_settle, retention=retention)
    took = time.perf_counter() - started
    removed = "; ".join(
        f"{a.action} {a.part_name} ({', '.join(a.services)})" for a in report.retention
    )
    if report.backend == "plain":
        work = f"{report.pieces} rollup piece(s) recomputed"
    else:
        work = f"{len(report.jobs)} job(s) run"
    line = (
        f"maintained ({report.backend}) in {took:.2f} s: {work}; retention: {removed or 'nothing'}"
    )
    if report.failed_jobs:
        first = report.failed_jobs[0]
        error = (first.error or "no error recorded").strip().splitlines()[0]
        line += (
            f"; TimescaleDB's scheduler: {len(report.failed_jobs)} job(s) last ended Failed"
            f" (job {first.job_id} {first.job}: {error}); this upkeep ran them"
        )
    return report, line
