"""Replay dead letters: decode each stored payload again against today's registry, store what
now validates and settle its dead letter in the same transaction."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

import psycopg

from devices.registry import RegistrySnapshot
from ingest.decode import Accepted, Row, Window, decode, device_id_of
from store.deadline import DEFAULT_TIMEOUT, connect_kwargs
from store.registry import load_snapshot
from store.rejects import RejectFilter, StoredReject, reject_page, update_reasons
from store.writer import InsertMode, ReadingsWriter

logger = logging.getLogger(__name__)

# Dead letters decoded and written per transaction: ingest's batch size, where COPY's
# per-statement cost has vanished and a failed batch is cheap to redo.
BATCH_SIZE: Final = 5000


@dataclass(frozen=True, slots=True)
class ReplayLimits:
    """What ingest accepts (its settings): the same rules judge a message the second time."""

    max_payload: int = 64 * 1024
    max_age: timedelta = timedelta(days=7)
    max_future: timedelta = timedelta(minutes=5)


@dataclass(slots=True)
class ReplayResult:
    examined: int = 0
    stored: int = 0  # messages whose readings are now stored; their dead letters are gone
    skipped: int = 0  # not telemetry (status messages): nothing to store them as
    still_failing: Counter[str] = field(default_factory=Counter)  # by their reason now

    def summary(self) -> str:
        failing = sum(self.still_failing.values())
        reasons = ", ".join(f"{n} {r}" for r, n in self.still_failing.most_common())
        text = f"replayed {self.examined} dead letter(s): {self.stored} stored"
        text += f", {failing} still failing" + (f" ({reasons})" if reasons else "")
        return text + (f", {self.skipped} skipped (not telemetry)" if self.skipped else "")


async def replay_rejects(
    database_url: str,
    where: RejectFilter,
    *,
    limits: ReplayLimits,
    stop: asyncio.Event | None = None,
    batch_size: int = BATCH_SIZE,
    insert_mode: InsertMode = "copy",
    store_timeout: timedelta = DEFAULT_TIMEOUT,
) -> ReplayResult:
    """Replay the dead letters `where` selects, a batch per transaction, until done or `stop`.

    Each message is judged as ingest judged it on arrival (the reading-time window as of its
    `received_at`) but against the registry as it is now: a device registered late, or a
    metric range widened, lets it through. One that still fails keeps its row, with the
    reason it fails for now.
    """
    result = ReplayResult()
    writer = ReadingsWriter(
        database_url, name="replay", insert_mode=insert_mode, timeout=store_timeout
    )
    conn = await psycopg.AsyncConnection.connect(
        database_url,
        autocommit=True,
        application_name="silobreak-replay",
        **connect_kwargs(database_url, store_timeout),
    )
    try:
        registry = await load_snapshot(conn)
        after = 0
        while stop is None or not stop.is_set():
            page = await reject_page(conn, where, after_id=after, limit=batch_size)
            if not page:
                break
            after = page[-1].id
            rows, settled, changed = _judge(page, registry, limits, result)
            if settled:
                await writer.write(rows, replayed=settled)
            await update_reasons(conn, changed)
            result.stored += len(settled)
            logger.info("replay: %s", result.summary())
    finally:
        await writer.close()
        await conn.close()
    return result


def _judge(
    page: list[StoredReject], registry: RegistrySnapshot, limits: ReplayLimits, result: ReplayResult
) -> tuple[dict[str, list[Row]], list[int], list[tuple[int, str, str]]]:
    """Decode a page: rows to store, the ids they settle, and (id, reason, detail) changes."""
    rows: dict[str, list[Row]] = {}
    settled: list[int] = []
    changed: list[tuple[int, str, str]] = []
    for reject in page:
        result.examined += 1
        if device_id_of(reject.topic) is None:
            result.skipped += 1
            continue
        window = Window.at(reject.received_at, max_age=limits.max_age, max_future=limits.max_future)
        outcome = decode(
            reject.topic, reject.payload, registry, window, max_payload=limits.max_payload
        )
        if isinstance(outcome, Accepted):
            rows.setdefault(outcome.device_type, []).extend(outcome.rows)
            settled.append(reject.id)
            continue
        result.still_failing[outcome.reason] += 1
        if (outcome.reason, outcome.detail) != (reject.reason, reject.detail):
            changed.append((reject.id, outcome.reason, outcome.detail))
    return rows, settled, changed
