"""Store upkeep on either backend: aggregates refreshed, chunks compressed, retention applied."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from retries import Backoff
from retries import Policy as RetryPolicy
from store.aggregates import HOUR, LEVELS
from store.errors import StoreError, first_line
from store.migrate import Backend, store_backend
from store.query import DEFAULT_SEAL_GRACE, Scope, sealed_end, widen
from store.reader import release
from store.schema import READINGS_TABLES

logger = logging.getLogger(__name__)

# Rows newer than this (by reading time) may still be in flight when a refresh runs: the
# plain views aggregate them from raw rows, as TimescaleDB's real-time aggregates do above
# their watermark. It matches the 1-minute policy's end_offset (0010_aggregates.*.sql).
DEFAULT_SETTLE: Final = timedelta(minutes=2)
# The TimescaleDB refresh policies' window (start_offset, 0010_aggregates.timescale.sql):
# aggregates kept longer than raw rows need raw rows kept at least this long, or a refresh
# inside the window would recompute them from rows that retention already removed.
REFRESH_WINDOW: Final = timedelta(days=8)
# How far back each round releases hourly pooled buckets (readers release older ones on
# demand): a day covers any upkeep outage shorter than that.
POOLED_WINDOW: Final = timedelta(days=1)
# A manual refresh in batches of 10 buckets, TimescaleDB 2.28's default, took 10.8-15.0 s
# for 40 days of a 1-minute aggregate; in one batch (`"buckets_per_batch": 0` in the
# procedure's `options`, new in 2.28) 0.11-0.46 s.
_REFRESH: Final = "CALL refresh_continuous_aggregate(%s, %s::timestamptz, %s::timestamptz)"
_REFRESH_ONE_BATCH: Final = (
    "CALL refresh_continuous_aggregate(%s, %s::timestamptz, %s::timestamptz,"
    """ options => '{"buckets_per_batch": 0}')"""
)
# A backfill's refresh waits for a policy refresh of the same aggregate to end, for 10 min
# at most (a policy run of the 8-day window in batches of 10 buckets takes minutes on a large
# city); tried again soon first (a policy's last batch is often about to commit), then no
# more often than every 5 s.
_CONCURRENT_REFRESH: Final = RetryPolicy(
    first=0.1, cap=5.0, give_up=timedelta(minutes=10).total_seconds()
)
# Advisory-lock class of rollup refreshes (any constant; the key is the table's hash).
_LOCK_CLASS: Final = 0x51_10


@dataclass(frozen=True, slots=True)
class RetentionAction:
    at: datetime
    relation: str
    part_name: str
    action: str  # "drop" or "delete"
    services: tuple[str, ...]
    rows: int | None


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A store job whose last run by TimescaleDB's scheduler ended `Failed`."""

    job_id: int
    job: str  # "refresh agg_1m_meter", "compression readings_meter", "silobreak_retention"
    started_at: datetime | None
    failures: int
    error: str | None  # the message of its latest recorded error


@dataclass(slots=True)
class MaintenanceReport:
    backend: Backend
    pieces: int = 0  # plain: (device, time range) pieces of rollups recomputed
    jobs: list[str] = field(default_factory=list)  # timescale: the jobs run, in order
    pooled: int = 0  # runs of hourly pooled buckets released
    retention: list[RetentionAction] = field(default_factory=list)
    # timescale: jobs whose last scheduled run failed (the upkeep above ran them anyway)
    failed_jobs: list[FailedJob] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Policy:
    service: str
    keep: timedelta
    keep_aggregates: timedelta


def maintain(
    conn: psycopg.Connection[Any],
    *,
    settle: timedelta = DEFAULT_SETTLE,
    retention: bool = True,
    compression: bool = True,
) -> MaintenanceReport:
    """One round of upkeep; `conn` must be in autocommit mode.

    Plain: recompute the rollups that changed, then apply retention. TimescaleDB: run the
    store's jobs now, in order (aggregates, compression, retention), and report those whose
    last run by TimescaleDB's scheduler failed: the platform does not rely on the scheduler
    (docs/store.md, "Upkeep").
    """
    backend = store_backend(conn)
    report = MaintenanceReport(backend)
    last_log = _last_log_id(conn)
    if backend == "plain":
        report.pieces = refresh_rollups(conn, settle=settle)
        if retention:
            conn.execute("CALL silobreak_retention()")
    else:
        kinds = ["refresh", *(["compression"] if compression else [])]
        kinds += ["retention"] if retention else []
        report.jobs = run_jobs(conn, kinds)
        report.failed_jobs = failed_jobs(conn)
    report.pooled = release_pooled(conn)
    report.retention = _retention_since(conn, last_log)
    return report


def release_pooled(conn: psycopg.Connection[Any], *, now: datetime | None = None) -> int:
    """Release the sealed hourly pooled buckets of the last POOLED_WINDOW, every device type:
    Grafana's governed `pooled_1h` and hourly pooled grants read them."""
    now = now or datetime.now(UTC)
    start, end = widen(now - POOLED_WINDOW, now, HOUR.width)
    end = sealed_end(end, HOUR.width, now, DEFAULT_SEAL_GRACE)
    return sum(
        release(conn, Scope(t, pooled=True, interval=HOUR.width), start, end)
        for t in READINGS_TABLES
    )


def refresh_rollups(conn: psycopg.Connection[Any], *, settle: timedelta = DEFAULT_SETTLE) -> int:
    """Plain backend: recompute the rollup buckets touched since the last refresh."""
    pieces = 0
    for device_type in READINGS_TABLES:
        table = READINGS_TABLES[device_type].name
        got = conn.execute(
            "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, table)
        ).fetchone()
        if not (got and got[0]):
            logger.info("rollups of %s: another maintainer is at work, skipping", table)
            continue
        try:
            with conn.transaction():
                # One snapshot for the whole refresh: each changed bucket is computed once.
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                fn = sql.Identifier(f"silobreak_refresh_rollups_{device_type}")
                row = conn.execute(sql.SQL("SELECT {}(%s)").format(fn), (settle,)).fetchone()
            pieces += int(row[0]) if row else 0
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLASS, table))
    return pieces


def run_jobs(conn: psycopg.Connection[Any], kinds: Iterable[str]) -> list[str]:
    """TimescaleDB: run the store's jobs of these kinds now (refresh, compression, retention).

    A refresh that TimescaleDB's scheduler is running at this moment is left to it: the
    server refuses a second one on the same aggregate ("due to a concurrent refresh").
    """
    ran: list[str] = []
    for kind in kinds:
        for job_id, label in _jobs(conn, kind):
            try:
                conn.execute("CALL run_job(%s)", (job_id,))
            except psycopg.errors.LockNotAvailable as exc:
                logger.info("%s: left to the run in progress (%s)", label, first_line(exc))
                continue
            ran.append(label)
    return ran


def failed_jobs(conn: psycopg.Connection[Any]) -> list[FailedJob]:
    """The store's jobs whose last run by TimescaleDB's scheduler ended `Failed` (migration
    0052; always none on the plain backend, which has no scheduler)."""
    rows = conn.execute(
        "SELECT job_id, job, last_run_started_at, coalesce(total_failures, 0), last_error"
        " FROM store_job_status WHERE last_run_status = 'Failed' ORDER BY job_id"
    ).fetchall()
    return [FailedJob(int(r[0]), str(r[1]), r[2], int(r[3]), r[4]) for r in rows]


def refresh_range(
    conn: psycopg.Connection[Any], device_types: Iterable[str], start: datetime, end: datetime
) -> None:
    """Bring the aggregates of readings timed in [start, end] up to date now (after a bulk load).

    TimescaleDB: refresh_continuous_aggregate over the range, 1 minute then 1 hour (its
    policies only look 8 days back), in one batch where the server lets us choose. Plain: the
    next rollup refresh finds the rows anyway.
    """
    if store_backend(conn) == "plain":
        refresh_rollups(conn)
        return
    # Whole hours that include `end`: the window must cover whole buckets of both levels,
    # and TimescaleDB refuses one of no bucket ("refresh window too small"), which [t, t)
    # was for a load whose readings all fell on one hour boundary.
    lo, hi = widen(start, end, HOUR.width)
    hi = hi if hi > end else hi + HOUR.width
    call = _REFRESH_ONE_BATCH if _refresh_takes_options(conn) else _REFRESH
    for device_type in device_types:
        for level in LEVELS:
            _refresh_waiting(conn, call, level.view(device_type), lo, hi)


def _refresh_waiting(
    conn: psycopg.Connection[Any], call: str, view: str, lo: datetime, hi: datetime
) -> None:
    """One refresh, tried again while the server refuses it for a concurrent one (its
    scheduler's policy run): unlike a policy's window, a backfilled range has no other
    refresh coming."""
    backoff = Backoff(_CONCURRENT_REFRESH)
    while True:
        try:
            conn.execute(call, (view, lo, hi))
        except psycopg.errors.LockNotAvailable as exc:
            if backoff.exhausted:
                raise StoreError(
                    f"refresh of {view}: a concurrent refresh held it for "
                    f"{_CONCURRENT_REFRESH.give_up:.0f} s: {first_line(exc)}"
                ) from exc
            logger.info("refresh of %s waits for a concurrent one: %s", view, first_line(exc))
            time.sleep(backoff.next())
        else:
            return


def _refresh_takes_options(conn: psycopg.Connection[Any]) -> bool:
    """Whether this server's refresh_continuous_aggregate takes `options` (2.28 does, with
    `buckets_per_batch` in it; PGlite's 2.23 does not). Asked of the procedure's signature,
    not of a version number."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_proc"
        " WHERE proname = 'refresh_continuous_aggregate' AND 'options' = ANY(proargnames))"
    ).fetchone()
    return bool(row and row[0])


def set_policy(
    conn: psycopg.Connection[Any],
    service: str,
    keep: timedelta,
    keep_aggregates: timedelta | None = None,
) -> Policy:
    """Keep `service`'s readings for `keep` (and its aggregates for `keep_aggregates`)."""
    aggregates = keep if keep_aggregates is None else keep_aggregates
    if keep <= timedelta(0):
        raise StoreError("retention must be a positive duration, e.g. 400d")
    if aggregates < keep:
        raise StoreError("aggregates cannot be kept for less time than the readings they sum")
    if aggregates > keep and keep < REFRESH_WINDOW:
        raise StoreError(
            f"keeping aggregates longer than readings needs readings kept at least "
            f"{REFRESH_WINDOW.days}d (the aggregates' refresh window)"
        )
    conn.execute(
        "INSERT INTO retention_policies (service, keep, keep_aggregates) VALUES (%s, %s, %s)"
        " ON CONFLICT (service) DO UPDATE SET keep = EXCLUDED.keep,"
        " keep_aggregates = EXCLUDED.keep_aggregates, updated_at = now()",
        (service, keep, aggregates),
    )
    return Policy(service, keep, aggregates)


def clear_policy(conn: psycopg.Connection[Any], service: str) -> bool:
    """Keep `service`'s data for ever again; False when it had no policy."""
    cur = conn.execute("DELETE FROM retention_policies WHERE service = %s", (service,))
    return cur.rowcount > 0


def policies(conn: psycopg.Connection[Any]) -> list[Policy]:
    rows = conn.execute(
        "SELECT service, keep, keep_aggregates FROM retention_policies ORDER BY service"
    ).fetchall()
    return [Policy(*row) for row in rows]


def recent_retention(conn: psycopg.Connection[Any], limit: int = 50) -> list[RetentionAction]:
    rows = conn.execute(
        "SELECT at, relation, part_name, action, services, rows FROM retention_log"
        " ORDER BY id DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [_action(row) for row in rows]


def _jobs(conn: psycopg.Connection[Any], kind: str) -> list[tuple[int, str]]:
    if kind == "retention":
        rows = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs"
            " WHERE proc_name = 'silobreak_retention' AND proc_schema = current_schema()"
        ).fetchall()
        return [(int(r[0]), "silobreak_retention") for r in rows]
    proc = {"refresh": "policy_refresh_continuous_aggregate", "compression": "policy_compression"}
    if kind not in proc:
        raise StoreError(f"unknown job kind {kind!r}")
    # 1-minute aggregates before the 1-hour ones built on them; raw tables before aggregates.
    order = [t.name for t in READINGS_TABLES.values()]
    order += [lv.view(t) for lv in LEVELS for t in READINGS_TABLES]
    rows = conn.execute(
        "SELECT job_id, hypertable_name FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_schema = current_schema()"
        " AND hypertable_name = ANY(%s)",
        (proc[kind], order),
    ).fetchall()
    rows.sort(key=lambda r: order.index(r[1]))
    return [(int(job_id), f"{kind} {name}") for job_id, name in rows]


def _last_log_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM retention_log").fetchone()
    return int(row[0]) if row else 0


def _retention_since(conn: psycopg.Connection[Any], after: int) -> list[RetentionAction]:
    rows = conn.execute(
        "SELECT at, relation, part_name, action, services, rows FROM retention_log"
        " WHERE id > %s ORDER BY id",
        (after,),
    ).fetchall()
    return [_action(row) for row in rows]


def _action(row: tuple[Any, ...]) -> RetentionAction:
    at, relation, part, action, services, rows = row
    return RetentionAction(at, relation, part, action, tuple(services), rows)
