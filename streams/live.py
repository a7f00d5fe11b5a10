"""Live delivery: one poll of the store per tick for every feed, and each feed's own replay.

The hub runs one REPEATABLE READ transaction per tick: it takes the snapshot S_now, reads
from each readings table the rows committed after its previous snapshot (one query per table
for all feeds), checks the feeds' grants in the same snapshot, and hands each feed what its
scope allows. A feed first replays history (rows committed before its start snapshot with
time >= since), then catches up alone from its cursor to the hub's position, and joins the
hub exactly there: no gap and no duplicate at either switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from retries import Backoff, Policy
from store.aggregates import ORIGIN
from store.writer import READINGS_CHANNEL
from streams import cursor, history
from streams.aggregate import AggregateKey, aggregates, key_of
from streams.cursor import Catchup, Live, Replay, Watermark
from streams.errors import StreamsError
from streams.pool import Pool
from streams.scope import Grant, Scope

logger = logging.getLogger(__name__)

# Batches a feed may hold before the hub drops it to catch up on its own: ~25 s of ticks,
# so a briefly slow consumer stays on the shared poll and a stuck one costs no memory.
FEED_QUEUE: Final = 100
# Rows per replay page: a page is one query and one delivered batch.
REPLAY_PAGE: Final = 5000
# Buckets per live aggregate batch while a watermark catches up: a day of hourly buckets, so
# a batch holds at most 24 buckets of the grant's devices or pools, whatever `since` was.
AGGREGATE_WINDOW: Final = 24
# How long a hub failure (the store down) waits before the next try: at most a second, so
# delivery resumes within a second of the store's return; jittered, so the gateways of a
# deployment do not reconnect at one instant.
RETRY_S: Final = 1.0
RETRY: Final = Policy(first=RETRY_S, cap=RETRY_S)
# Transaction ids named by notifications kept between two checks; more are not needed (one
# genuine id is enough to tick), and a flood of forged ones cannot grow memory.
MAX_HINTS: Final = 1000
_XID_DIGITS: Final = 20
# The least time between two ticks: commits closer together than this share a tick.
MIN_TICK_S: Final = 0.05


class FeedClosed(StreamsError):
    """The feed's grant or subscription ended; `reason` says which (revoked, expired, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings (or aggregates) and the cursor that follows them."""

    readings: list[dict[str, Any]]
    cursor: str
    phase: str  # replay, live, aggregate


class Feed:
    """One subscription's batches, in commit order; iterate `batches()`."""

    def __init__(
        self,
        hub: Hub,
        grant: Grant,
        scopes: Sequence[Scope],
        start: cursor.Cursor,
        *,
        name: str = "",
    ) -> None:
        self.hub = hub
        self.grant = grant
        self.scopes = tuple(scopes)
        self.cursor = start
        self.name = name
        self.closed: str | None = None
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(FEED_QUEUE)
        self._wake = asyncio.Event()
        self.attached = False

    @property
    def is_aggregate(self) -> bool:
        return self.grant.granularity == "aggregate"

    async def batches(self) -> AsyncIterator[Batch]:
        """Replay, catch up, then live batches until the grant ends (FeedClosed) or cancel."""
        self.hub.watch(self)
        try:
            if self.is_aggregate:
                async for batch in self._aggregates():
                    yield batch
                return
            if isinstance(self.cursor, Replay):
                async for batch in self._replay(self.cursor):
                    yield batch
            while True:
                async for batch in self._catch_up():
                    yield batch
                async for batch in self._live():
                    yield batch
        finally:
            self.hub.unwatch(self)

    def close(self, reason: str) -> None:
        """Stop at once: what is queued is not delivered."""
        self.closed = reason
        self.attached = False
        self._wake.set()

    def _check(self) -> None:
        if self.closed is not None:
            raise FeedClosed(self.closed)

    async def _replay(self, start: Replay) -> AsyncIterator[Batch]:
        at = start
        for index in range(start.table, len(self.scopes)):
            scope = self.scopes[index]
            after = None
            if index == at.table and at.time is not None:
                after = history.RowKey(at.time, at.device_id)
            while True:
                self._check()
                async with self.hub.connection() as conn:
                    rows = await history.raw_page(
                        conn, scope, start=start.since, end=None, after=after,
                        limit=REPLAY_PAGE, committed_before=start.snapshot,
                    )  # fmt: skip
                self._check()
                if not rows:
                    break
                after = history.RowKey(rows[-1][0], rows[-1][1])
                at = Replay(start.snapshot, start.since, index, after.time, after.device_id)
                self.cursor = at
                yield Batch(history.explode(scope, rows), cursor.encode(at), "replay")
        self.cursor = Live(start.snapshot)

    async def _catch_up(self) -> AsyncIterator[Batch]:
        """Read alone up to the hub's position, page by page, then hand the last stretch to
        the hub. A pass that needed full pages took a while: another pass follows, to a newer
        position, so the hub is handed only what committed during a short one."""
        self._check()
        if isinstance(self.cursor, Catchup):
            at = self.cursor
            after = history.RowKey(at.time, at.device_id)
            async for batch in self._catch_up_pass(at.prev, at.upto, at.table, after):
                if batch.readings:
                    yield Batch(batch.readings, batch.cursor, "live")
        while True:
            assert isinstance(self.cursor, Live)
            target = await self.hub.position()
            held: list[dict[str, Any]] = []
            paged = False
            async for batch in self._catch_up_pass(self.cursor.snapshot, target, 0, None):
                if batch.phase == "held":
                    held = batch.readings
                    continue
                paged = True
                yield batch
            if not paged:
                break
            if held:
                yield Batch(held, cursor.encode(self.cursor), "live")
        # From `target` on, the hub reads for us within its own tick: nothing can slip
        # between the end of this catch-up and the first shared batch.
        self.attached = True
        self.hub.join(self, target)
        if held:
            yield Batch(held, cursor.encode(self.cursor), "live")

    async def _catch_up_pass(
        self, prev: str, upto: str, table: int, after: history.RowKey | None
    ) -> AsyncIterator[Batch]:
        """Full pages as they are read (each one query of at most REPLAY_PAGE rows, with a
        Catchup cursor), then what is left over as one `held` batch; the cursor ends at
        Live(upto)."""
        held: list[dict[str, Any]] = []
        for index in range(table, len(self.scopes)):
            scope = self.scopes[index]
            while True:
                async with self.hub.connection() as conn:
                    rows = await history.committed_after(
                        conn, scope, prev=prev, upto=upto, after=after, limit=REPLAY_PAGE
                    )
                self._check()
                held += history.explode(scope, rows)
                if len(rows) < REPLAY_PAGE:
                    break
                after = history.RowKey(rows[-1][0], rows[-1][1])
                self.cursor = Catchup(prev, upto, index, after.time, after.device_id)
                yield Batch(held, cursor.encode(self.cursor), "live")
                held = []
            after = None
        self.cursor = Live(upto)
        yield Batch(held, cursor.encode(self.cursor), "held")

    async def _live(self) -> AsyncIterator[Batch]:
        while self.attached or not self._queue.empty():
            self._check()
            if self._queue.empty():
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue.get_nowait()
            self._check()
            yield batch

    def push(self, snap: str, readings: list[dict[str, Any]]) -> None:
        """Called by the hub once a tick with what this feed may see of it."""
        self.cursor = Live(snap)
        if not readings:
            return
        try:
            self._queue.put_nowait(Batch(readings, cursor.encode(self.cursor), "live"))
        except asyncio.QueueFull:
            # A consumer this far behind reads alone until it is near the hub again.
            logger.info("feed %s fell behind; it catches up alone", self.name)
            self.attached = False
            self.cursor = self._last_queued()
        self._wake.set()

    def _last_queued(self) -> Live:
        # The queue is full: its last batch's cursor is where the catch-up resumes.
        last: Batch = self._queue._queue[-1]  # type: ignore[attr-defined]
        found = cursor.decode(last.cursor)
        assert isinstance(found, Live)
        return found

    async def _aggregates(self) -> AsyncIterator[Batch]:
        grant = self.grant
        assert grant.interval_s is not None
        step = timedelta(seconds=grant.interval_s)
        mark = self.cursor.until if isinstance(self.cursor, Watermark) else _now()
        while True:
            self._check()
            due = _floor_to(_now() - self.hub.aggregate_grace, step)
            # A watermark far behind (a `since` long ago) is caught up a window at a time:
            # one batch never holds more than AGGREGATE_WINDOW buckets.
            upto = min(due, mark + step * AGGREGATE_WINDOW)
            if upto > mark:
                rows = [row async for page in self._aggregate_pages(mark, upto) for row in page]
                mark = upto
                self.cursor = Watermark(mark)
                yield Batch(rows, cursor.encode(self.cursor), "aggregate")
                if upto < due:
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.hub.poll_interval):
                    await self._wake.wait()

    async def _aggregate_pages(
        self, start: datetime, end: datetime
    ) -> AsyncIterator[list[dict[str, Any]]]:
        for scope in self.scopes:
            after: AggregateKey | None = None
            while True:
                async with self.hub.connection() as conn:
                    rows = await aggregates(
                        conn, scope, start=start, end=end, after=after, limit=REPLAY_PAGE,
                        min_pool=self.hub.min_pool, grace=self.hub.aggregate_grace,
                    )  # fmt: skip
                self._check()
                if not rows:
                    break
                after = key_of(rows[-1])
                yield rows


# district, lat, lon, personal_data
_DeviceInfo = tuple[str | None, float | None, float | None, bool]


@dataclass
class _Devices:
    version: int = -1
    by_id: dict[str, _DeviceInfo] = field(default_factory=dict)


class Hub:
    """The shared poller of one streams gateway."""

    def __init__(
        self,
        conninfo: str,
        *,
        pool: Pool,
        poll_interval: timedelta,
        min_pool: int,
        aggregate_grace: timedelta = timedelta(seconds=5),
    ) -> None:
        self.conninfo = conninfo
        self.pool = pool
        self.poll_interval = poll_interval.total_seconds()
        self.min_pool = min_pool
        self.aggregate_grace = aggregate_grace
        self.current: str | None = None  # the snapshot every attached feed has been given
        self.ticks = 0
        self._watched: set[Feed] = set()
        self._members: set[Feed] = set()
        self._joining: dict[Feed, str] = {}
        self._devices = _Devices()
        self._moved = asyncio.Event()
        self._poke = asyncio.Event()
        self._on_tick: list[asyncio.Event] = []
        self.listening = False  # hearing the writers' commits
        self.notifications = 0
        self.hints_ignored = 0  # notifications that named no new readings (or nothing)
        self._hints: set[int] = set()
        self._hinted = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for one page of a feed's own reads (replay, catch-up,
        aggregates): a page is one query that needs no session state."""
        async with self.pool.connection() as conn:
            yield conn

    def watch(self, feed: Feed) -> None:
        """Check the feed's grant every tick from now on (also while it replays)."""
        self._watched.add(feed)
        self._poke.set()

    def unwatch(self, feed: Feed) -> None:
        self._watched.discard(feed)
        self._members.discard(feed)
        self._joining.pop(feed, None)

    def join(self, feed: Feed, since: str) -> None:
        """Deliver to `feed` everything committed after snapshot `since`, from the next tick."""
        self._joining[feed] = since
        self._poke.set()

    async def position(self) -> str:
        """The hub's snapshot, after at least one tick."""
        while self.current is None:
            self._moved.clear()
            self._poke.set()
            await self._moved.wait()
        return self.current

    async def next_tick(self) -> None:
        """Wait until a tick that began after this call has finished (revocations are applied
        by then)."""
        done = asyncio.Event()
        self._on_tick.append(done)
        self._poke.set()
        await done.wait()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop`; the store going away pauses delivery, it does not end it.

        A tick follows each commit of readings (the writers' NOTIFY), at most one per
        `MIN_TICK_S`, and at the latest one `poll_interval` after the previous tick: polling
        alone keeps delivery going while notifications cannot be heard."""
        conn: psycopg.AsyncConnection[Any] | None = None
        listener = asyncio.create_task(self._listen(stop), name="streams-hub-listen")
        backoff = Backoff(RETRY)
        last = 0.0
        try:
            while not stop.is_set():
                wait = last + MIN_TICK_S - time.monotonic()
                if wait > 0:
                    await _sleep_or(stop, wait)
                last = time.monotonic()
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.conninfo, autocommit=True,
                            application_name="silobreak-streams-hub",
                        )  # fmt: skip
                    # What was asked for until now (pokes, commits heard) this tick serves;
                    # what comes during it asks for the next one.
                    self._poke.clear()
                    self._hinted.clear()
                    self._hints = set()
                    await self._tick(conn)
                    backoff.reset()
                    await self._idle(stop, conn)
                except psycopg.OperationalError as exc:
                    logger.warning("streams hub: store unavailable: %s", str(exc).strip())
                    if conn is not None:
                        await conn.close()
                    conn = None
                    await backoff.sleep(stop)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if conn is not None:
                await conn.close()

    async def _listen(self, stop: asyncio.Event) -> None:
        """Take each commit's notification as a hint; reconnect when the store goes away.

        Any database login can NOTIFY this channel (PostgreSQL has no privilege on it), so a
        notification is only a transaction id to look at (`_genuine`), never a tick."""
        backoff = Backoff(RETRY)
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, application_name="silobreak-streams-listen"
                ) as conn:
                    await conn.execute(f"LISTEN {READINGS_CHANNEL}".encode())
                    self.listening = True
                    backoff.reset()
                    self._poke.set()  # commits while nobody listened: look now
                    async for note in conn.notifies():
                        self.notifications += 1
                        self._hint(note.payload)
            except psycopg.Error as exc:
                logger.info("streams hub: not listening for commits: %s", str(exc).strip())
            finally:
                self.listening = False
            await backoff.sleep(stop)

    def _hint(self, payload: str) -> None:
        if not payload.isdigit() or len(payload) > _XID_DIGITS:
            self.hints_ignored += 1
            return
        if len(self._hints) < MAX_HINTS:
            self._hints.add(int(payload))
        self._hinted.set()

    async def _idle(self, stop: asyncio.Event, conn: psycopg.AsyncConnection[Any]) -> None:
        """Wait for a poke, a genuine commit, `stop`, or the poll interval."""
        deadline = time.monotonic() + self.poll_interval
        while not (self._poke.is_set() or stop.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            waits = [asyncio.ensure_future(e.wait()) for e in (self._poke, self._hinted, stop)]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if self._hinted.is_set() and not self._poke.is_set():
                self._hinted.clear()
                hints, self._hints = self._hints, set()
                if await self._genuine(conn, hints):
                    break
                self.hints_ignored += len(hints)
                # One check per MIN_TICK_S however many notifications arrive.
                await _sleep_or(stop, MIN_TICK_S)

    async def _genuine(self, conn: psycopg.AsyncConnection[Any], hints: set[int]) -> bool:
        """Whether one of the transactions `hints` names stored readings this hub has not
        seen: one probe of each table's `batch` index."""
        if self.current is None or not hints:
            return self.current is None
        from store.schema import READINGS_TABLES  # noqa: PLC0415

        probes = sql.SQL(" OR ").join(
            sql.SQL(
                "EXISTS (SELECT 1 FROM {} r WHERE r.batch = ANY(%(ids)s::bigint[]) AND {})"
            ).format(sql.Identifier(t.name), sql.SQL(cursor.AFTER))
            for t in READINGS_TABLES.values()
        )
        cur = await conn.execute(
            sql.SQL("SELECT {}").format(probes), {"ids": sorted(hints), "prev": self.current}
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _tick(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Only those who asked before this tick began are told it is done: a tick under way
        # when next_tick() was called may have read the grants before the call.
        waiting, self._on_tick = self._on_tick, []
        prev = self.current
        attached = [f for f in self._members if f.closed is None]
        joining = dict(self._joining)
        tables = {s.table for f in attached for s in f.scopes}
        shared: dict[str, _TickRows] = {}
        own: dict[Feed, list[dict[str, Any]]] = {}
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            now_snap = str(await _scalar(conn, "SELECT pg_current_snapshot()::text"))
            await self._refresh_devices(conn)
            states = await self._grant_states(conn)
            if prev is not None:
                for table in sorted(tables):
                    shared[table] = _TickRows(await _delta(conn, table, prev))
            for feed, since in joining.items():
                own[feed] = []
                for scope in feed.scopes:
                    rows = await history.committed_after(conn, scope, prev=since, upto=None)
                    own[feed] += history.explode(scope, rows)
        self.current = now_snap
        self.ticks += 1
        for tick in shared.values():
            tick.index(self._devices.by_id)
        for feed in list(self._watched):
            # A feed watched during this tick, after its grants were read, is checked at the
            # next one: an absent state is not a reason to close it (grants are never deleted).
            state = states.get(feed.grant.id)
            if state is not None and state != "active":
                feed.close(f"grant_{state}")
        for feed in attached:
            if feed.closed is None and feed.attached:
                feed.push(now_snap, self._select(feed, shared))
        for feed, readings in own.items():
            if self._joining.get(feed) == joining[feed]:
                del self._joining[feed]
                if feed.closed is None:
                    self._members.add(feed)
                    feed.push(now_snap, readings)
        self._members = {f for f in self._members if f.attached and f.closed is None}
        self._moved.set()
        for done in waiting:
            done.set()

    def _select(self, feed: Feed, shared: dict[str, _TickRows]) -> list[dict[str, Any]]:
        """What `feed` may see of the rows every feed shares: its scopes, in memory.

        Only the rows of the scope's owner (and granted districts) are looked at, so a tick
        costs about one pass over its rows for all feeds, not one per feed."""
        readings: list[dict[str, Any]] = []
        for scope in feed.scopes:
            tick = shared.get(scope.table)
            if tick is None:
                continue
            groups = tick.groups(scope.grant.owner, scope.districts)
            columns = [_FIXED + i for i in _metric_indexes(scope)]
            kept = [
                (r[0], r[1], r[2], district, *(r[c] for c in columns))
                for rows in groups
                for r, district, lat, lon, personal in rows
                if scope.matches(r[2], district, lat, lon, personal)
            ]
            if len(groups) > 1:
                kept.sort(key=_time_and_device)  # the order the tick read them in
            readings += history.explode(scope, kept)
        return readings

    async def _grant_states(self, conn: psycopg.AsyncConnection[Any]) -> dict[int, str]:
        """grant id -> active, expired, revoked, ... for the watched feeds' grants, now."""
        ids = sorted({f.grant.id for f in self._watched})
        if not ids:
            return {}
        cur = await conn.execute(
            "SELECT id, CASE WHEN status = 'active' AND expires_at <= now() THEN 'expired'"
            " ELSE status END FROM grants WHERE id = ANY(%s)",
            (ids,),
        )
        return {row[0]: row[1] for row in await cur.fetchall()}

    async def _refresh_devices(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Read in the tick's snapshot: a device whose rows this tick sees is in the cache.
        version = int(await _scalar(conn, "SELECT version FROM registry_version"))
        if version == self._devices.version:
            return
        cur = await conn.execute("SELECT device_id, district, lat, lon, personal_data FROM devices")
        rows = await cur.fetchall()
        self._devices = _Devices(version, {r[0]: (r[1], r[2], r[3], r[4]) for r in rows})


# Columns before the metrics in a row of `_delta`: time, device_id, service.
_FIXED: Final = 3

_Located = tuple[tuple[Any, ...], str | None, float | None, float | None, bool]


class _TickRows:
    """One table's rows of a tick, grouped by owner and district for the feeds' selection."""

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        # service -> district -> (row, district, lat, lon, personal), in the rows' order
        self._by_owner: dict[str, dict[str | None, list[_Located]]] = {}

    def index(
        self, devices: dict[str, tuple[str | None, float | None, float | None, bool]]
    ) -> None:
        by_owner: dict[str, dict[str | None, list[_Located]]] = {}
        for r in self.rows:
            info = devices.get(r[1])
            if info is None:
                continue  # not in the registry as this tick read it: no grant covers it
            district = info[0]
            by_owner.setdefault(r[2], {}).setdefault(district, []).append((r, *info))
        self._by_owner = by_owner

    def groups(self, owner: str, districts: frozenset[str] | None) -> list[list[_Located]]:
        """The groups of rows a scope of `owner` over `districts` (None: all) may match."""
        by_district = self._by_owner.get(owner)
        if not by_district:
            return []
        if districts is None:
            return list(by_district.values())
        return [by_district[d] for d in districts if d in by_district]


def _time_and_device(row: tuple[Any, ...]) -> tuple[Any, Any]:
    return row[0], row[1]


def _metric_indexes(scope: Scope) -> list[int]:
    names = scope_table_columns(scope.device_type)
    return [names.index(m) for m in scope.metrics]


def scope_table_columns(device_type: str) -> tuple[str, ...]:
    from store.schema import READINGS_TABLES  # noqa: PLC0415

    return READINGS_TABLES[device_type].metric_columns


async def _delta(
    conn: psycopg.AsyncConnection[Any], table: str, prev: str
) -> list[tuple[Any, ...]]:
    """Rows of `table` committed after `prev`: (time, device_id, service, metrics..., batch)."""
    device_type = table.removeprefix("readings_")
    metrics = history.metric_columns(scope_table_columns(device_type))
    query = sql.SQL(
        "SELECT r.time, r.device_id, r.service, {metrics}, r.batch FROM {table} r WHERE {after}"
    ).format(metrics=metrics, table=sql.Identifier(table), after=sql.SQL(cursor.AFTER))
    cur = await conn.execute(query, {"prev": prev})
    rows = await cur.fetchall()
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


async def _scalar(conn: psycopg.AsyncConnection[Any], query: str) -> Any:
    cur = await conn.execute(query.encode())
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


def _now() -> datetime:
    return datetime.now(UTC)


def _floor_to(at: datetime, step: timedelta) -> datetime:
    return ORIGIN + ((at - ORIGIN) // step) * step
