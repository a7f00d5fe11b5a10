"""The write path: one transaction per batch, COPY first, an idempotent merge on redelivery."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg import sql

from store.deadline import Deadline, Session, connect_kwargs, end_session, session_of
from store.errors import StoreError, StoreRefused, StoreUnavailable, first_line
from store.primary import READ_ONLY_SQLSTATE, primary_kwargs
from store.schema import READINGS_TABLES, ReadingsTable

logger = logging.getLogger(__name__)

Row = tuple[Any, ...]
# "copy": binary COPY, the production path. "unnest": one INSERT ... SELECT FROM unnest(arrays)
# per table, for servers without COPY FROM STDIN (the PGlite TimescaleDB test server); it
# needs no prepared statements either, which PGlite's shared session cannot hold.
InsertMode = Literal["copy", "unnest"]

REJECT_COLUMNS: Final = ("received_at", "topic", "device_id", "reason", "detail", "payload")
_REJECT_TYPES: Final = ("timestamptz", "text", "text", "text", "text", "bytea")
# Days of partitions made ahead of the newest reading, so midnight never waits on DDL.
_PARTITIONS_AHEAD: Final = 2
# Notified by every transaction that stores readings, at its commit: live delivery wakes on it
# instead of waiting for its next poll. The payload is the transaction's id (its rows' `batch`).
# Any database login may NOTIFY any channel, so a listener treats it as a hint only: it wakes
# when rows of that batch exist and are new to it (streams.live), never on the word alone.
READINGS_CHANNEL: Final = "silobreak_readings"
_NOTIFY: Final = f"SELECT pg_notify('{READINGS_CHANNEL}', txid_current()::text)".encode()
# SQLSTATE classes after which the same batch may succeed later: 08 connection exception,
# 53 insufficient resources (disk full), 57 operator intervention (shutdown), 40 rollback;
# and 25006, a read-only server: a standby, or a primary demoted under a switchover, while
# another member takes writes (store.primary).
_RETRYABLE_CLASSES: Final = ("08", "53", "57", "40")
# SQLSTATEs that say the database refuses some rows of a batch for what they hold, and will
# refuse them on every try (StoreRefused; ingest then sets those messages aside with
# `write_isolating`): class 22, data exception (a value a column, cast or function refuses),
# and class 23, integrity constraint violation (a CHECK, NOT NULL, foreign key or exclusion
# constraint, or a trigger raising one of these codes), but not:
#  - 23505 unique violation: the redelivery merge handles readings' key (device_id, time); one
#    that gets past it means the idempotent write itself is broken, and setting messages
#    aside would dead-letter redeliveries that are stored;
#  - 22P03 invalid binary representation, 22P04 bad COPY file format: the binary COPY does
#    not fit the table (a column altered under the writer), which refuses every row alike.
# A NOT NULL violation (23502) counts only on a column the writer fills: one it does not fill
# (a column added without a default) refuses every row. Anything else that is not retryable
# (undefined table 42P01, permission denied 42501, a trigger's RAISE without an ERRCODE,
# P0001) is the operator's or the code's mistake, not the data's: the batch is held.
_REFUSED_CLASSES: Final = ("22", "23")
_NOT_REFUSED: Final = frozenset({"23505", "22P03", "22P04"})
_NOT_NULL_VIOLATION: Final = "23502"


@dataclass(frozen=True, slots=True)
class RejectRow:
    """A message that could not be stored, as it goes into `rejected_messages`."""

    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: int  # rows that are new, or that filled metrics missing from a stored row
    duplicates: int  # rows that were already stored whole (redeliveries)
    rejects: int


@dataclass(frozen=True, slots=True)
class IsolatedWrite:
    """What `write_isolating` committed: the batch but the messages the database refused."""

    result: WriteResult  # its `rejects` counts the refused messages' dead letters too
    refused: list[tuple[int, RejectRow]]  # (index, dead letter) of each, in batch order
    probes: int  # parts of the batch written to find them


Message = tuple[str, Sequence[Row]]
"""One message's rows and the device type whose table they go to."""


class ReadingsWriter:
    """Writes batches of readings and rejects; a batch is committed whole or not at all."""

    def __init__(
        self,
        conninfo: str,
        *,
        name: str = "writer",
        insert_mode: InsertMode = "copy",
        timeout: timedelta | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._name = name
        self._insert_mode = insert_mode
        self._timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._session: Session | None = None  # the server session of `_conn`
        self._abandoned: Session | None = None  # one of a connection given up on, to end
        self._partitioned = False
        self._days: dict[str, set[Any]] = {}
        self._staged: set[str] = set()

    async def connect(self) -> None:
        if self._conn is not None and not self._conn.closed:
            return
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo,
                application_name=f"silobreak-{self._name}",
                prepare_threshold=None if self._insert_mode == "unnest" else 5,
                **(
                    connect_kwargs(self._conninfo, self._timeout)
                    if self._timeout
                    else primary_kwargs(self._conninfo)
                ),
            )
            await self._conn.set_autocommit(True)
            row = await (
                await self._conn.execute("SELECT value FROM store_settings WHERE key = 'backend'")
            ).fetchone()
            if self._abandoned is not None:
                await end_session(self._conn, self._abandoned)
                self._abandoned = None
            self._session = await session_of(self._conn)
        except psycopg.errors.UndefinedTable as exc:
            await self.close()
            raise StoreError("database is not migrated: run `silobreak migrate`") from exc
        except psycopg.Error as exc:
            await self.close()
            raise unavailable(self._name, exc) from exc
        if row is None:
            await self.close()
            raise StoreError("database is not migrated: run `silobreak migrate`")
        self._partitioned = row[0] == "plain"
        self._days.clear()
        self._staged.clear()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._session = None

    async def _abandon(self) -> None:
        """Close a connection that failed: its server session may live on, in the middle of
        the batch and holding its keys, so the next connect ends it (`end_session`)."""
        session = self._session
        await self.close()
        self._abandoned = session or self._abandoned

    async def write(
        self,
        rows_by_type: Mapping[str, Sequence[Row]],
        rejects: Sequence[RejectRow] = (),
        *,
        replayed: Sequence[int] = (),
    ) -> WriteResult:
        """Commit every row and reject of one batch; raises StoreUnavailable to be retried,
        also, given a `timeout` (store/deadline.py), when the database has not answered
        within it. Ingest gives one; a bulk load that may take its time need not.

        `replayed`: ids of `rejected_messages` rows whose readings this batch stores at last
        (`silobreak rejects replay`); they are deleted in the same transaction.
        """
        if self._timeout is None:
            return await self._write(rows_by_type, rejects, replayed)
        deadline = Deadline(self._timeout)
        try:
            with deadline.watch(lambda: self._conn):
                return await self._write(rows_by_type, rejects, replayed)
        except StoreUnavailable as exc:
            if deadline.expired:
                raise StoreUnavailable(f"{self._name}: {deadline.describe()}") from exc
            raise

    async def _write(
        self,
        rows_by_type: Mapping[str, Sequence[Row]],
        rejects: Sequence[RejectRow],
        replayed: Sequence[int],
    ) -> WriteResult:
        await self.connect()
        conn = self._conn
        assert conn is not None
        in_rows = False  # an error now is about the batch's readings, not its dead letters
        try:
            if self._partitioned:
                await self._ensure_partitions(conn, rows_by_type)
            stored = duplicates = 0
            async with conn.transaction():
                in_rows = True
                for device_type, rows in rows_by_type.items():
                    if rows:
                        new, dup = await self._write_rows(conn, READINGS_TABLES[device_type], rows)
                        stored += new
                        duplicates += dup
                in_rows = False
                if stored:
                    await conn.execute(_NOTIFY, prepare=False)
                await self._insert_rejects(conn, rejects)
                if replayed:
                    await conn.execute(
                        "DELETE FROM rejected_messages WHERE id = ANY(%s)", [list(replayed)]
                    )
        except psycopg.Error as exc:
            self._staged.clear()  # a stage table made in the transaction is gone with it
            if conn.closed or _retryable(exc):
                await self._abandon()
                raise unavailable(self._name, exc) from exc
            if in_rows and _refuses_rows(exc):
                raise StoreRefused(
                    f"{self._name}: batch refused: {first_line(exc)}",
                    sqlstate=exc.sqlstate or "",
                    why=_why(exc),
                ) from exc
            raise StoreError(f"{self._name}: batch refused: {first_line(exc)}") from exc
        return WriteResult(stored, duplicates, len(rejects))

    async def write_isolating(
        self,
        messages: Sequence[Message],
        rejects: Sequence[RejectRow],
        dead_letter: Callable[[int, str], RejectRow],
        *,
        refused: StoreRefused,
    ) -> IsolatedWrite:
        """Commit a batch that `write` raised `refused` for, but the messages the database
        refuses: those go to `rejected_messages` as `dead_letter(index, why)` makes them,
        beside `rejects`, in the same transaction.

        The batch's messages (`messages`, in arrival order) are written in parts, each under a
        savepoint (`find_refused`): a part refused is split in halves down to single
        messages, a part that passes stays written; a message is stored or set aside whole.
        One commit, and with k messages refused out of N at most 2·k·⌈log2 N⌉ parts. Raises
        StoreUnavailable and StoreError as `write` does (never StoreRefused: what is refused
        now is set aside), and has the same deadline, for each statement of the transaction.
        """
        deadline = Deadline(self._timeout) if self._timeout is not None else None
        try:
            return await self._write_isolating(messages, rejects, dead_letter, refused, deadline)
        except StoreUnavailable as exc:
            if deadline is not None and deadline.expired:
                raise StoreUnavailable(f"{self._name}: {deadline.describe()}") from exc
            raise

    async def _write_isolating(
        self,
        messages: Sequence[Message],
        rejects: Sequence[RejectRow],
        dead_letter: Callable[[int, str], RejectRow],
        refused: StoreRefused,
        deadline: Deadline | None,
    ) -> IsolatedWrite:
        def step() -> AbstractContextManager[object]:
            return deadline.watch(lambda: self._conn) if deadline is not None else nullcontext()

        with step():
            await self.connect()
        conn = self._conn
        assert conn is not None
        stored = duplicates = probes = 0

        async def write_part(start: int, stop: int) -> str | None:
            nonlocal stored, duplicates, probes
            probes += 1
            part = _by_type(messages[start:stop])
            try:
                with step():
                    async with conn.transaction():  # a savepoint: a refused part leaves nothing
                        new = dup = 0
                        for device_type, rows in part.items():
                            table = READINGS_TABLES[device_type]
                            n, d = await self._write_rows(conn, table, rows)
                            new += n
                            dup += d
            except psycopg.Error as exc:
                self._staged.clear()  # a stage table made under the savepoint is gone with it
                if conn.closed or not _refuses_rows(exc):
                    raise
                return _why(exc)
            stored += new
            duplicates += dup
            return None

        try:
            with step():
                if self._partitioned:
                    await self._ensure_partitions(conn, _by_type(messages))
                # By hand, so that the COMMIT is under a deadline of its own as each part is.
                await conn.execute("BEGIN", prepare=False)
            try:
                found = await find_refused(len(messages), write_part, refused.why)
                letters = [(i, dead_letter(i, why)) for i, why in found]
                with step():
                    await self._insert_rejects(conn, [*rejects, *(r for _, r in letters)])
                    if stored:
                        await conn.execute(_NOTIFY, prepare=False)
                    await conn.execute("COMMIT", prepare=False)
            except BaseException:
                if not conn.closed:
                    # A deadline of its own: `step()` would forget that one had expired.
                    watch = Deadline(self._timeout).watch(conn) if self._timeout else nullcontext()
                    with watch:
                        await conn.execute("ROLLBACK", prepare=False)
                raise
        except psycopg.Error as exc:
            self._staged.clear()
            if conn.closed or _retryable(exc):
                await self._abandon()
                raise unavailable(self._name, exc) from exc
            raise StoreError(f"{self._name}: batch refused: {first_line(exc)}") from exc
        result = WriteResult(stored, duplicates, len(rejects) + len(letters))
        return IsolatedWrite(result, letters, probes)

    async def _insert_rejects(
        self, conn: psycopg.AsyncConnection[Any], rejects: Sequence[RejectRow]
    ) -> None:
        if rejects and self._insert_mode == "unnest":
            await _insert_rejects(conn, rejects)
        elif rejects:
            await _copy_rejects(conn, rejects)

    async def _write_rows(
        self, conn: psycopg.AsyncConnection[Any], table: ReadingsTable, rows: Sequence[Row]
    ) -> tuple[int, int]:
        if self._insert_mode == "unnest":
            merged = merge_first_wins(rows)
            columns = [list(c) for c in zip(*merged, strict=True)]
            cur = await conn.execute(_merge_sql(table, _unnest_source(table)), columns)
            changed = max(cur.rowcount, 0)
            return changed, len(rows) - changed
        # Fast path: plain COPY. A redelivered message breaks the primary key and rolls
        # back only this savepoint; the merge below then stores what is new.
        try:
            async with conn.transaction():
                await _copy(conn, table.name, table.columns, table.copy_types, rows)
        except psycopg.errors.UniqueViolation:
            pass
        else:
            return len(rows), 0
        merged = merge_first_wins(rows)
        stage = await self._stage(conn, table)
        await conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))
        await _copy(conn, stage, table.columns, table.copy_types, merged)
        source = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, table.columns)), sql.Identifier(stage)
        )
        cur = await conn.execute(_merge_sql(table, source))
        changed = max(cur.rowcount, 0)
        return changed, len(rows) - changed

    async def _stage(self, conn: psycopg.AsyncConnection[Any], table: ReadingsTable) -> str:
        stage = f"stage_{table.name}"
        if stage not in self._staged:
            await conn.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS)").format(
                    sql.Identifier(stage), sql.Identifier(table.name)
                )
            )
            self._staged.add(stage)
        return stage

    async def _ensure_partitions(
        self, conn: psycopg.AsyncConnection[Any], rows_by_type: Mapping[str, Sequence[Row]]
    ) -> None:
        for device_type, rows in rows_by_type.items():
            if not rows:
                continue
            table = READINGS_TABLES[device_type].name
            known = self._days.setdefault(table, set())
            times = [r[0] for r in rows]
            first = min(times).astimezone(UTC).date()
            last = max(times).astimezone(UTC).date()
            if first in known and last in known and (last - first).days <= 1:
                continue
            last_needed = max(last, datetime.now(UTC).date()) + timedelta(days=_PARTITIONS_AHEAD)
            await conn.execute(
                "SELECT silobreak_ensure_partitions(%s, %s, %s)", (table, first, last_needed)
            )
            day = first
            while day <= last_needed:
                known.add(day)
                day += timedelta(days=1)


async def find_refused(
    count: int, write_part: Callable[[int, int], Awaitable[str | None]], why: str
) -> list[tuple[int, str]]:
    """Which of `count` items, refused together (for `why`), are refused on their own.

    `write_part(start, stop)` writes items [start, stop) and returns None, or why they were
    refused (having written none of them). A refused part is split in halves and each half
    tried, down to single items: a part that passes is written once, in item order; each
    refused item comes back as (index, why), in index order. With k items refused, at most
    2·k·⌈log2 count⌉ parts are tried (two halves for each refused part above a single item,
    and each refused item is in at most ⌈log2 count⌉ of those).
    """
    found: list[tuple[int, str]] = []

    async def split(start: int, stop: int, why: str) -> None:
        if stop - start == 1:
            found.append((start, why))
            return
        middle = (start + stop) // 2
        for lo, hi in ((start, middle), (middle, stop)):
            refused = await write_part(lo, hi)
            if refused is not None:
                await split(lo, hi, refused)

    if count:
        await split(0, count, why)
    return found


def merge_first_wins(rows: Sequence[Row]) -> list[Row]:
    """One row per (device_id, time); for each metric the first value given wins."""
    merged: dict[tuple[Any, Any], list[Any]] = {}
    for row in rows:
        key = (row[1], row[0])
        have = merged.get(key)
        if have is None:
            merged[key] = list(row)
            continue
        for i in range(3, len(row)):
            if have[i] is None and row[i] is not None:
                have[i] = row[i]
    return [tuple(r) for r in merged.values()]


def unavailable(name: str, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"{name}: database unavailable: {first_line(exc)}")


async def _copy(
    conn: psycopg.AsyncConnection[Any],
    table: str,
    columns: Sequence[str],
    types: Sequence[str],
    rows: Sequence[Row],
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    async with conn.cursor().copy(stmt) as copy:
        copy.set_types(list(types))
        for row in rows:
            await copy.write_row(row)


async def _copy_rejects(conn: psycopg.AsyncConnection[Any], rejects: Sequence[RejectRow]) -> None:
    rows = [
        (
            r.received_at,
            _text(r.topic),
            None if r.device_id is None else _text(r.device_id),
            r.reason,
            _text(r.detail),
            r.payload,
        )
        for r in rejects
    ]
    await _copy(conn, "rejected_messages", REJECT_COLUMNS, _REJECT_TYPES, rows)


async def _insert_rejects(conn: psycopg.AsyncConnection[Any], rejects: Sequence[RejectRow]) -> None:
    columns = sql.SQL(", ").join(map(sql.Identifier, REJECT_COLUMNS))
    arrays = sql.SQL(", ").join(sql.SQL(f"%s::{t}[]") for t in _REJECT_TYPES)
    await conn.execute(
        sql.SQL("INSERT INTO rejected_messages ({}) SELECT * FROM unnest({})").format(
            columns, arrays
        ),
        [
            [r.received_at for r in rejects],
            [_text(r.topic) for r in rejects],
            [None if r.device_id is None else _text(r.device_id) for r in rejects],
            [r.reason for r in rejects],
            [_text(r.detail) for r in rejects],
            [r.payload for r in rejects],
        ],
    )


def _unnest_source(table: ReadingsTable) -> sql.Composed:
    arrays = sql.SQL(", ").join(sql.SQL(f"%s::{t}[]") for t in table.copy_types)
    return sql.SQL("SELECT * FROM unnest({})").format(arrays)


def _merge_sql(table: ReadingsTable, source: sql.Composable) -> sql.Composed:
    metrics = [sql.Identifier(c) for c in table.metric_columns]
    # A row that gains metrics moves to this batch, so live subscribers see it again (its
    # earlier metrics with it: at least once, for this rare case of one time sent in parts).
    sets = sql.SQL(", ").join(
        [sql.SQL("{0} = COALESCE(r.{0}, EXCLUDED.{0})").format(m) for m in metrics]
        + [sql.SQL("batch = EXCLUDED.batch")]
    )
    fills = sql.SQL(" OR ").join(
        sql.SQL("(r.{0} IS NULL AND EXCLUDED.{0} IS NOT NULL)").format(m) for m in metrics
    )
    cols = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    return sql.SQL(
        "INSERT INTO {table} AS r ({cols}) {source}"
        " ON CONFLICT (device_id, time) DO UPDATE SET {sets} WHERE {fills}"
    ).format(
        table=sql.Identifier(table.name),
        cols=cols,
        source=source,
        sets=sets,
        fills=fills,
    )


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; keep the rest of what the device sent."""
    return value.replace("\x00", "\\u0000")


def refuses_rows(sqlstate: str | None, column: str | None = None) -> bool:
    """Whether an error (its SQLSTATE, and the column a NOT NULL violation names) refuses
    some rows for what they hold, every time: see _REFUSED_CLASSES."""
    if sqlstate is None or sqlstate[:2] not in _REFUSED_CLASSES or sqlstate in _NOT_REFUSED:
        return False
    return sqlstate != _NOT_NULL_VIOLATION or any(
        column in t.columns for t in READINGS_TABLES.values()
    )


def _refuses_rows(exc: psycopg.Error) -> bool:
    return refuses_rows(exc.sqlstate, exc.diag.column_name)


def _why(exc: psycopg.Error) -> str:
    """The database's one-line error with its SQLSTATE, for a dead letter's detail."""
    return f"{first_line(exc)} (SQLSTATE {exc.sqlstate})"


def _by_type(messages: Sequence[Message]) -> dict[str, list[Row]]:
    rows_by_type: dict[str, list[Row]] = {}
    for device_type, rows in messages:
        have = rows_by_type.get(device_type)
        if have is None:
            rows_by_type[device_type] = list(rows)
        else:
            have.extend(rows)
    return rows_by_type


def _retryable(exc: psycopg.Error) -> bool:
    state = exc.sqlstate or ""
    return (
        isinstance(exc, psycopg.OperationalError)
        or state[:2] in _RETRYABLE_CLASSES
        or state == READ_ONLY_SQLSTATE
    )
