"""Mirror every committed reading into InfluxDB 2, in commit order, without ever losing one.

The mirror follows the store, it is not in the write path: ingest commits to PostgreSQL and
never waits on InfluxDB. The mirror reads the rows committed since its cursor (a snapshot in
`mirror_state`; rows carry their writing transaction in `batch`), writes them in batches
(awaited, retried with backoff for as long as InfluxDB is away) and only then moves its cursor.
An outage or a crash therefore loses nothing: the mirror resumes from the cursor, and what it
sends twice overwrites itself (a point is keyed by measurement, tags and time).

Layout: measurement = device type, tags = device, district, service, fields = the metrics of
one message, time = the reading's time; one bucket per owning service (`silobreak-{service}`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg import sql

from retries import Backoff
from store.errors import STORE_RETRY, StoreError, StoreUnavailable
from store.schema import READINGS_TABLES, ReadingsTable

logger = logging.getLogger(__name__)

# A snapshot before every transaction: a new mirror starts from the first reading.
BEGINNING: Final = "3:3:"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Advisory-lock class of mirrors: one process per mirror name moves its cursor.
_LOCK_CLASS: Final = 0x51_11
# Line protocol: in tag values, these are escaped with a backslash; newlines cannot appear.
_TAG_ESCAPES: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " "})
_AFTER: Final = (
    "r.batch >= pg_snapshot_xmin(%(prev)s::pg_snapshot)::text::bigint"
    " AND NOT pg_visible_in_snapshot(r.batch::text::xid8, %(prev)s::pg_snapshot)"
    " AND pg_visible_in_snapshot(r.batch::text::xid8, %(now)s::pg_snapshot)"
)


class MirrorUnavailable(StoreUnavailable):
    """The mirror's server refused or did not answer a write; it is retried."""


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    url: str
    token: str = ""
    org: str = "silobreak"
    bucket: str = "silobreak-{service}"  # `{service}`: the owning service
    batch_size: int = 5000
    interval: timedelta = timedelta(seconds=1)
    timeout: timedelta = timedelta(seconds=10)
    name: str = "influx"
    from_beginning: bool = True  # False: a new mirror starts with what is committed next


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    name: str
    sent: int
    updated_at: datetime
    last_error: str
    behind: int  # rows committed after the cursor


class InfluxMirror:
    """Copies what the store commits to InfluxDB, batch by batch, resuming where it stopped."""

    def __init__(self, database_url: str, config: MirrorConfig) -> None:
        self.config = config
        self._database_url = database_url
        self._sink = InfluxSink(config)
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror until `stop` is set; a pass that found nothing waits `interval`."""
        # InfluxDB or PostgreSQL away: retried as ingest retries the store.
        backoff = Backoff(STORE_RETRY)
        try:
            while not stop.is_set():
                try:
                    sent = await self.sync_once(stop)
                except (StoreUnavailable, psycopg.OperationalError) as exc:
                    logger.warning("mirror %s: %s; retrying", self.config.name, exc)
                    await self._close()
                    await backoff.sleep(stop)
                    continue
                backoff.reset()
                if not sent:
                    await _wait(stop, self.config.interval.total_seconds())
        finally:
            await self.close()

    async def close(self) -> None:
        """Release the database connection and the HTTP client."""
        await self._close()
        self._sink.close()

    async def sync_once(self, stop: asyncio.Event | None = None) -> int:
        """Send every row committed since the cursor; returns how many were sent.

        A failed write is retried until it succeeds (or `stop` is set, which raises
        StoreUnavailable and leaves the cursor where it was).
        """
        conn = await self._connection()
        prev = await self._cursor(conn)
        row = await (await conn.execute("SELECT pg_current_snapshot()::text")).fetchone()
        now = str(row[0]) if row else prev
        sent = 0
        for table in READINGS_TABLES.values():
            for ids in await _pages(conn, table, prev, now, self.config.batch_size):
                rows = await _rows(conn, table, ids)
                for part in _chunks(rows, self.config.batch_size):
                    await self._send(encode(table, part, self.config.bucket), stop)
                sent += len(rows)
        await conn.execute(
            "UPDATE mirror_state SET cursor = %s::pg_snapshot, sent = sent + %s,"
            " updated_at = now(), last_error = '' WHERE name = %s",
            (now, sent, self.config.name),
        )
        return sent

    async def _send(self, by_bucket: dict[str, bytes], stop: asyncio.Event | None) -> None:
        backoff = Backoff(STORE_RETRY)
        for bucket, lines in by_bucket.items():
            while True:
                try:
                    await asyncio.to_thread(self._sink.write, bucket, lines)
                    break
                except MirrorUnavailable as exc:
                    await self._record_error(str(exc))
                    if stop is not None and stop.is_set():
                        raise
                    logger.warning("mirror %s: %s; retrying", self.config.name, exc)
                    await backoff.sleep(stop)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._database_url, autocommit=True, application_name="silobreak-mirror"
            )
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"mirror {self.config.name}: database: {exc}") from exc
        got = await (
            await conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, self.config.name)
            )
        ).fetchone()
        if not (got and got[0]):
            await conn.close()
            raise StoreUnavailable(f"mirror {self.config.name} is run by another process")
        self._conn = conn
        return conn

    async def _cursor(self, conn: psycopg.AsyncConnection[Any]) -> str:
        start = BEGINNING if self.config.from_beginning else None
        await conn.execute(
            "INSERT INTO mirror_state (name, cursor)"
            " VALUES (%s, coalesce(%s::pg_snapshot, pg_current_snapshot()))"
            " ON CONFLICT (name) DO NOTHING",
            (self.config.name, start),
        )
        row = await (
            await conn.execute(
                "SELECT cursor::text FROM mirror_state WHERE name = %s", (self.config.name,)
            )
        ).fetchone()
        if row is None:
            raise StoreError(f"mirror {self.config.name}: no cursor")
        return str(row[0])

    async def _record_error(self, error: str) -> None:
        if self._conn is not None and not self._conn.closed:
            await self._conn.execute(
                "UPDATE mirror_state SET last_error = %s, updated_at = now() WHERE name = %s",
                (error[:500], self.config.name),
            )

    async def _close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class InfluxSink:
    """Synchronous writes through influxdb-client: each returns once InfluxDB has the points.

    Not its batching WriteApi, which buffers without bound and only logs failures.
    """

    def __init__(self, config: MirrorConfig) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415
        from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415

        self._org = config.org
        self._client = InfluxDBClient(
            url=config.url,
            token=config.token,
            org=config.org,
            timeout=int(config.timeout.total_seconds() * 1000),
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, bucket: str, lines: bytes) -> None:
        from influxdb_client.rest import ApiException  # noqa: PLC0415
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        try:
            self._api.write(bucket=bucket, org=self._org, record=lines)
        except ApiException as exc:
            raise MirrorUnavailable(f"influx: HTTP {exc.status} {exc.reason}") from exc
        except (HTTPError, OSError) as exc:
            raise MirrorUnavailable(f"influx: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


def encode(table: ReadingsTable, rows: Iterable[Sequence[Any]], bucket: str) -> dict[str, bytes]:
    """Rows (batch, time, device_id, service, district, *metrics) as line protocol per bucket."""
    lines: dict[str, list[str]] = {}
    measurement = table.device_type
    metrics = table.metric_columns
    for row in rows:
        at, device_id, service, district = row[1:5]
        fields = ",".join(
            f"{m}={v!r}" for m, v in zip(metrics, row[5:], strict=True) if v is not None
        )
        if not fields:
            continue
        tags = f"device={_tag(device_id)}"
        if district:
            tags += f",district={_tag(district)}"
        tags += f",service={_tag(service)}"
        ns = (at - _EPOCH) // timedelta(microseconds=1) * 1000
        lines.setdefault(bucket.format(service=service), []).append(
            f"{measurement},{tags} {fields} {ns}"
        )
    return {b: "\n".join(ls).encode() for b, ls in lines.items()}


async def status(conn: psycopg.AsyncConnection[Any], name: str) -> MirrorStatus | None:
    """Where mirror `name` is: sent so far, last error, rows still to send."""
    row = await (
        await conn.execute(
            "SELECT sent, updated_at, last_error, cursor::text FROM mirror_state WHERE name = %s",
            (name,),
        )
    ).fetchone()
    if row is None:
        return None
    sent, updated_at, last_error, cursor = row
    now_row = await (await conn.execute("SELECT pg_current_snapshot()::text")).fetchone()
    now = str(now_row[0]) if now_row else cursor
    behind = 0
    for table in READINGS_TABLES.values():
        count = await (
            await conn.execute(
                sql.SQL("SELECT count(*) FROM {} r WHERE {}").format(
                    sql.Identifier(table.name), sql.SQL(_AFTER)
                ),
                {"prev": cursor, "now": now},
            )
        ).fetchone()
        behind += int(count[0]) if count else 0
    return MirrorStatus(name, int(sent), updated_at, last_error, behind)


async def _pages(
    conn: psycopg.AsyncConnection[Any], table: ReadingsTable, prev: str, now: str, size: int
) -> list[list[int]]:
    """The transactions committed in (prev, now], grouped into pages of about `size` rows.

    Whole transactions per page: their rows are fetched by `batch`, the column's index.
    """
    cur = await conn.execute(
        sql.SQL(
            "SELECT r.batch, count(*) FROM {} r WHERE {} GROUP BY r.batch ORDER BY r.batch"
        ).format(sql.Identifier(table.name), sql.SQL(_AFTER)),
        {"prev": prev, "now": now},
    )
    pages: list[list[int]] = []
    rows_in_page = size
    for batch, count in await cur.fetchall():
        if rows_in_page >= size:
            pages.append([])
            rows_in_page = 0
        pages[-1].append(int(batch))
        rows_in_page += int(count)
    return pages


async def _rows(
    conn: psycopg.AsyncConnection[Any], table: ReadingsTable, batches: list[int]
) -> list[tuple[Any, ...]]:
    metrics = sql.SQL(", ").join(
        sql.SQL("r.{}::float8").format(sql.Identifier(m)) for m in table.metric_columns
    )
    cur = await conn.execute(
        sql.SQL(
            "SELECT r.batch, r.time, r.device_id, r.service, d.district, {}"
            " FROM {} r LEFT JOIN devices d USING (device_id) WHERE r.batch = ANY(%s)"
            " ORDER BY r.batch, r.time, r.device_id"
        ).format(metrics, sql.Identifier(table.name)),
        (batches,),
    )
    return await cur.fetchall()


def _chunks(rows: list[tuple[Any, ...]], size: int) -> Iterable[list[tuple[Any, ...]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _tag(value: str) -> str:
    # A trailing backslash would escape the separator after it.
    return value.translate(_TAG_ESCAPES).rstrip("\\")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
