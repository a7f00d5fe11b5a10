"""Replay dead letters: decode each stored payload again against today's registry, store what
now validates and settle its dead letter in the same transaction; what the database still
refuses keeps its dead letter."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final

import psycopg

from devices.registry import RegistrySnapshot
from ingest.decode import STORE_REFUSED, Accepted, Row, Window, decode, device_id_of
from store.deadline import DEFAULT_TIMEOUT, connect_kwargs
from store.errors import StoreRefused
from store.registry import load_snapshot
from store.rejects import RejectFilter, StoredReject, reject_page, update_reasons
from store.writer import InsertMode, ReadingsWriter, find_refused

logger = logging.getLogger(__name__)

# Dead letters decoded and written per transaction: ingest's batch size, where COPY's
# per-statement cost has vanished and a failed batch is cheap to redo.
BATCH_SIZE: Final = 5000

Change = tuple[int, str, str]
"""(id, reason, detail): a dead letter that still fails, and what it fails with now."""


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
    parts: int = 0  # parts written to find the messages the database refuses (store_refused)

    def summary(self) -> str:
        failing = sum(self.still_failing.values())
        notes = [", ".join(f"{n} {r}" for r, n in self.still_failing.most_common())]
        if self.parts:
            notes.append(f"{self.parts} part(s) written to find those the store refuses")
        notes = [n for n in notes if n]
        text = f"replayed {self.examined} dead letter(s): {self.stored} stored"
        text += f", {failing} still failing" + (f" ({'; '.join(notes)})" if notes else "")
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
    reason it fails for now; one that decodes but that the database refuses for good (a
    constraint still in place) keeps it as `store_refused`, with the database's error.
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
            accepted, changed = _judge(page, registry, limits, result)
            changed += await _store(writer, accepted, result)
            await update_reasons(conn, changed)
            logger.info("replay: %s", result.summary())
    finally:
        await writer.close()
        await conn.close()
    return result


async def _store(
    writer: ReadingsWriter,
    accepted: list[tuple[StoredReject, Accepted]],
    result: ReplayResult,
) -> list[Change]:
    """Store the messages that decode now, each with its dead letter deleted in the same
    transaction; returns the changes for those the database still refuses for good.

    The page is written in one transaction. One the database refuses for what some of its
    rows hold is split as ingest splits a batch (`store.writer.find_refused`): a refused part
    in halves down to single messages, and each part that passes is written, with its dead
    letters deleted, in a transaction of its own: at most 2·k·⌈log2 N⌉ of them for k refused
    messages in N. The refused messages keep their dead letters (and their ids, so a replay
    never meets them twice), as `store_refused` with the database's error of now.
    """
    if not accepted:
        return []

    async def write(start: int, stop: int) -> None:
        part = accepted[start:stop]
        rows: dict[str, list[Row]] = {}
        for _, outcome in part:
            rows.setdefault(outcome.device_type, []).extend(outcome.rows)
        await writer.write(rows, replayed=[reject.id for reject, _ in part])
        result.stored += len(part)

    try:
        await write(0, len(accepted))
    except StoreRefused as refused:
        why = refused.why
    else:
        return []

    parts = 0

    async def write_part(start: int, stop: int) -> str | None:
        nonlocal parts
        parts += 1
        try:
            await write(start, stop)
        except StoreRefused as exc:
            return exc.why
        return None

    found = await find_refused(len(accepted), write_part, why)
    result.parts += parts
    result.still_failing[STORE_REFUSED] += len(found)
    if found:
        logger.warning(
            "replay: the store refused %d of %d message(s) for good: %s; kept as %s dead"
            " letters, stored the rest (%d part(s) tried)",
            len(found),
            len(accepted),
            found[0][1],
            STORE_REFUSED,
            parts,
        )
    changed: list[Change] = []
    for i, detail in found:
        reject = accepted[i][0]
        if (reject.reason, reject.detail) != (STORE_REFUSED, detail):
            changed.append((reject.id, STORE_REFUSED, detail))
    return changed


def _judge(
    page: list[StoredReject], registry: RegistrySnapshot, limits: ReplayLimits, result: ReplayResult
) -> tuple[list[tuple[StoredReject, Accepted]], list[Change]]:
    """Decode a page: the messages that decode now, and changes for those that do not."""
    accepted: list[tuple[StoredReject, Accepted]] = []
    changed: list[Change] = []
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
            accepted.append((reject, outcome))
            continue
        result.still_failing[outcome.reason] += 1
        if (outcome.reason, outcome.detail) != (reject.reason, reject.detail):
            changed.append((reject.id, outcome.reason, outcome.detail))
    return accepted, changed
