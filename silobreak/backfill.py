"""Bulk history into the store: a CSV file or a simulated past, validated as ingest validates.

Every message goes through ingest's own `decode()` (registry, catalog, ranges, owner at the
reading's time) with a reading-time window open to the past, then the store's writer (COPY,
idempotent: loading a file twice stores nothing twice) in large batches, then the aggregates
of the loaded range are refreshed. Rejected messages go to `rejected_messages` like ingest's.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import logging
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import msgspec
import psycopg

from devices.registry import RegistrySnapshot
from devices.topics import TELEMETRY, topic
from ingest.decode import Accepted, Window, decode
from silobreak.errors import SilobreakError
from store.maintain import policies, refresh_range
from store.registry import load_snapshot
from store.writer import InsertMode, ReadingsWriter, RejectRow, Row, merge_first_wins

logger = logging.getLogger(__name__)

# (topic, payload, where it came from for a reject's detail: "file.csv:12")
Message = tuple[str, bytes, str]
_EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
_INT_RE: Final = re.compile(r"[+-]?\d+")
_NUMBER_RE: Final = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_encode = msgspec.json.Encoder().encode
# The contract's payload limit: a CSV line never comes close, but decode() wants one.
_MAX_PAYLOAD: Final = 64 * 1024
# Rejects quoted in the report: enough to see what is wrong with a file.
_EXAMPLES: Final = 5


class BackfillError(SilobreakError):
    """The input cannot be loaded at all (unreadable file, no usable columns)."""


@dataclass(slots=True)
class BackfillReport:
    messages: int = 0
    stored: int = 0  # rows new, or that filled metrics missing from a stored row
    duplicates: int = 0  # rows already stored whole
    expired: int = 0  # older than their service's retention: not stored
    rejected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None
    device_types: set[str] = field(default_factory=set)
    seconds: float = 0.0  # end to end, refresh included
    write_seconds: float = 0.0  # waiting on the store's writes alone

    def add(self, other: BackfillReport) -> None:
        self.messages += other.messages
        self.write_seconds += other.write_seconds
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.expired += other.expired
        self.rejected.update(other.rejected)
        self.examples += other.examples[: _EXAMPLES - len(self.examples)]
        self.device_types |= other.device_types
        for moment in (other.first, other.last):
            if moment is not None:
                self.first = moment if self.first is None else min(self.first, moment)
                self.last = moment if self.last is None else max(self.last, moment)

    @property
    def rate(self) -> float:
        """Messages per second, end to end."""
        return self.messages / self.seconds if self.seconds else 0.0


def backfill(
    conninfo: str,
    messages: Iterable[Message],
    *,
    batch_size: int = 50_000,
    insert_mode: InsertMode = "copy",
    max_future: timedelta = timedelta(minutes=5),
    refresh: bool = True,
) -> BackfillReport:
    """Validate and store `messages`, then refresh the aggregates of the range loaded."""
    started = time.perf_counter()
    report = asyncio.run(
        _load(conninfo, messages, batch_size=batch_size, insert_mode=insert_mode,
              max_future=max_future)
    )  # fmt: skip
    if refresh:
        refresh_loaded(conninfo, report)
    report.seconds = time.perf_counter() - started
    return report


def refresh_loaded(conninfo: str, report: BackfillReport) -> None:
    """Bring the aggregates of what `report` loaded up to date."""
    if report.first is None or report.last is None:
        return
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        refresh_range(conn, sorted(report.device_types), report.first, report.last)


def csv_messages(path: Path) -> Iterator[Message]:
    """Telemetry messages from a CSV file, columns found by header name.

    Narrow: `time,device_id,metric,value` (rows of one device and time, adjacent, make one
    message). Wide: `time,device_id,<metric>,<metric>...` (one message a line, empty cells
    absent). `time` is ISO 8601 with an offset, or epoch milliseconds. Other columns (such as
    `service` or `device_type`, which come from the registry) are ignored.
    """
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise BackfillError(f"{path}: cannot read: {exc.strerror}") from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        if "time" not in header or "device_id" not in header:
            raise BackfillError(f"{path}: needs a header with time and device_id columns")
        narrow = "metric" in header and "value" in header
        ignored = {"time", "device_id", "service", "device_type", "district"}
        wide_metrics = [h for h in header if h not in ignored]
        if not narrow and not wide_metrics:
            raise BackfillError(f"{path}: no metric columns (or metric,value) in the header")
        lines = ((reader.line_num, row) for row in reader)
        yield from (_narrow(path.name, lines) if narrow else _wide(path.name, lines, wide_metrics))


@dataclass(frozen=True, slots=True)
class SimulatedCity:
    """A firmware_sim city to simulate: its scenario, scaled and re-timed if asked."""

    scenario: Path | None = None  # None: the shipped default city
    devices: int | None = None
    seed: int | None = None
    interval: timedelta | None = None  # every device publishes this often (None: scenario's)

    def fleet(self) -> Any:
        from firmware_sim import build_fleet, default_scenario, load_scenario, scale_scenario  # noqa: PLC0415
        from firmware_sim.scenario import Intervals  # noqa: PLC0415

        city = load_scenario(self.scenario) if self.scenario else default_scenario()
        if self.devices is not None:
            city = scale_scenario(city, self.devices)
        if self.interval is not None:
            seconds = self.interval.total_seconds()
            fields = dict.fromkeys(Intervals.model_fields, seconds)
            city = city.model_copy(update={"intervals": Intervals(**fields)})
        return build_fleet(city, seed=self.seed)


def backfill_simulated(
    conninfo: str,
    city: SimulatedCity,
    start: datetime,
    end: datetime,
    *,
    jobs: int = 1,
    batch_size: int = 50_000,
    insert_mode: InsertMode = "copy",
    refresh: bool = True,
) -> BackfillReport:
    """Register the simulated fleet and load what it publishes in [start, end).

    `jobs` processes each simulate, validate and store a slice of the period (firmware_sim's
    messages do not depend on where a range starts), then the aggregates are refreshed once.
    """
    from store.registry import upsert_devices  # noqa: PLC0415

    started = time.perf_counter()
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        upsert_devices(conn, city.fleet().records())
    slices = time_slices(start, end, jobs)
    report = BackfillReport()
    if len(slices) == 1:
        report.add(_load_slice(conninfo, city, start, end, batch_size, insert_mode))
    else:
        # spawn, not fork: each worker starts clean of this process's connections and loop.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(slices), mp_context=context) as pool:
            futures = [
                pool.submit(_load_slice, conninfo, city, a, b, batch_size, insert_mode)
                for a, b in slices
            ]
            for future in futures:
                report.add(future.result())
    if refresh:
        refresh_loaded(conninfo, report)
    report.seconds = time.perf_counter() - started
    return report


def _load_slice(
    conninfo: str,
    city: SimulatedCity,
    start: datetime,
    end: datetime,
    batch_size: int,
    insert_mode: InsertMode,
) -> BackfillReport:
    messages = simulated_messages(city.fleet(), start, end)
    return backfill(conninfo, messages, batch_size=batch_size, insert_mode=insert_mode,
                    refresh=False)  # fmt: skip


def simulated_messages(fleet: Any, start: datetime, end: datetime) -> Iterator[Message]:
    """The telemetry a simulated fleet (firmware_sim) publishes in [start, end)."""
    from firmware_sim import messages  # noqa: PLC0415 - only the CLI imports firmware_sim

    for msg in messages(fleet, start, end):
        if msg.kind != "event":
            yield msg.topic, msg.payload, "simulated"


def time_slices(start: datetime, end: datetime, parts: int) -> list[tuple[datetime, datetime]]:
    """[start, end) cut into `parts` consecutive whole-minute slices, for parallel loads."""
    minutes = max(1, int((end - start) / timedelta(minutes=1)))
    cuts = [start + timedelta(minutes=minutes * i // parts) for i in range(parts)] + [end]
    return [(a, b) for a, b in itertools.pairwise(cuts) if a < b]


# -- the load ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    rows: dict[str, list[Row]] = field(default_factory=dict)
    rejects: list[RejectRow] = field(default_factory=list)
    messages: int = 0


async def _load(
    conninfo: str,
    messages: Iterable[Message],
    *,
    batch_size: int,
    insert_mode: InsertMode,
    max_future: timedelta,
) -> BackfillReport:
    async with await psycopg.AsyncConnection.connect(
        conninfo, autocommit=True, prepare_threshold=None
    ) as conn:
        registry = await load_snapshot(conn)
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as sync:
        keep = {p.service: p.keep for p in policies(sync)}
    now = datetime.now(UTC)
    window = Window(now, _EARLIEST, now + max_future)
    cutoffs = {service: now - kept for service, kept in keep.items()}
    report = BackfillReport()
    source = iter(messages)
    writer = ReadingsWriter(conninfo, name="backfill", insert_mode=insert_mode)
    try:
        # Validate, then store, one batch after the other: validating the next batch in a
        # thread meanwhile was slower (it starves the writer of the GIL); `jobs` processes
        # are the way to use more cores.
        while True:
            batch = _take(source, registry, window, cutoffs, batch_size, report)
            if not batch.messages:
                break
            rows = {t: merge_first_wins(r) for t, r in batch.rows.items()}
            started = time.perf_counter()
            result = await writer.write(rows, batch.rejects)
            report.write_seconds += time.perf_counter() - started
            report.stored += result.stored
            report.duplicates += result.duplicates + sum(
                len(batch.rows[t]) - len(rows[t]) for t in rows
            )
    finally:
        await writer.close()
    return report


def _take(
    source: Iterator[Message],
    registry: RegistrySnapshot,
    window: Window,
    cutoffs: dict[str, datetime],
    batch_size: int,
    report: BackfillReport,
) -> _Batch:
    batch = _Batch()
    for topic_name, payload, origin in source:
        batch.messages += 1
        result = decode(topic_name, payload, registry, window, max_payload=_MAX_PAYLOAD)
        if isinstance(result, Accepted):
            _accept(batch, result, cutoffs, report)
        else:
            detail = f"backfill {origin}: {result.detail}"
            batch.rejects.append(
                RejectRow(window.now, topic_name, result.device_id, result.reason, detail, payload)
            )
            report.rejected[result.reason] += 1
            if len(report.examples) < _EXAMPLES:
                report.examples.append(f"{origin}: {result.reason}: {result.detail}")
        if batch.messages >= batch_size:
            break
    report.messages += batch.messages
    return batch


def _accept(
    batch: _Batch, result: Accepted, cutoffs: dict[str, datetime], report: BackfillReport
) -> None:
    kept = [r for r in result.rows if r[0] >= cutoffs.get(r[2], r[0])]
    report.expired += len(result.rows) - len(kept)
    if not kept:
        return
    batch.rows.setdefault(result.device_type, []).extend(kept)
    report.device_types.add(result.device_type)
    first, last = min(r[0] for r in kept), max(r[0] for r in kept)
    report.first = first if report.first is None else min(report.first, first)
    report.last = last if report.last is None else max(report.last, last)


# -- CSV -----------------------------------------------------------------------------------


def _narrow(name: str, lines: Iterable[tuple[int, dict[str, str | None]]]) -> Iterator[Message]:
    key: tuple[str, str] | None = None
    metrics: dict[str, Any] = {}
    first_line = 0
    for line, row in lines:
        this = (row.get("device_id") or "", row.get("time") or "")
        if this != key:
            if key is not None:
                yield _message(key[0], key[1], metrics, f"{name}:{first_line}")
            key, metrics, first_line = this, {}, line
        metric = row.get("metric") or ""
        metrics[metric] = _cell(row.get("value"))
    if key is not None:
        yield _message(key[0], key[1], metrics, f"{name}:{first_line}")


def _wide(
    name: str, lines: Iterable[tuple[int, dict[str, str | None]]], columns: Sequence[str]
) -> Iterator[Message]:
    for line, row in lines:
        metrics = {m: _cell(row.get(m)) for m in columns if (row.get(m) or "").strip() != ""}
        yield _message(row.get("device_id") or "", row.get("time") or "", metrics, f"{name}:{line}")


def _message(device_id: str, at: str, metrics: dict[str, Any], origin: str) -> Message:
    ts: Any = int(at) if _INT_RE.fullmatch(at.strip()) else at.strip()
    payload = _encode({"ts": ts, "metrics": metrics})
    return topic(device_id, TELEMETRY), payload, origin


def _cell(text: str | None) -> Any:
    """A CSV cell as the JSON value a device would have sent."""
    value = (text or "").strip()
    if value in ("true", "false"):
        return value == "true"
    if _INT_RE.fullmatch(value):
        return int(value)
    if _NUMBER_RE.fullmatch(value):
        return float(value)
    return value
