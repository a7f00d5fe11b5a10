"""The ingestor: MQTT publishes in (or AMQP deliveries of them), batches committed to the store,
acknowledged after commit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from devices.registry import RegistrySnapshot
from devices.topics import shared_filter
from ingest.amqp_source import AmqpSource, queue_name
from ingest.decode import STORE_REFUSED, Accepted, Row, Window, decode, device_id_of
from ingest.errors import IngestError
from ingest.metrics import IngestMetrics
from ingest.status import STATUS_FILTER, STATUS_SUFFIX, PresenceWriter, Status, take_status
from mqtt import MqttError, MqttSubscriber
from retries import Backoff
from store.deadline import DEFAULT_TIMEOUT, Deadline, connect_kwargs
from store.errors import STORE_RETRY, StoreError, StoreRefused, StoreUnavailable, first_line
from store.registry import load_snapshot, registry_version
from store.writer import ReadingsWriter, RejectRow, WriteResult

logger = logging.getLogger(__name__)

# Sealed batches waiting for the writer before the socket stops being read: one being
# written and one filling covers a steady flow; more only adds memory and latency.
_MAX_SEALED: Final = 2
# The reading-time window moves this often rather than once per message.
_WINDOW_REFRESH_S: Final = 0.05
# While the store stays unavailable, the log says so again this often (and why, this time).
_STILL_FAILING_EVERY_S: Final = 30.0
# On SIGTERM, how long to keep trying to commit what is in hand before leaving it to the
# broker (it redelivers unacknowledged messages to the same client id).
_SHUTDOWN_GRACE_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class IngestConfig:
    mqtt_url: str
    database_url: str
    client_id: str
    share_group: str = "ingest"
    # Set: consume the share group's quorum queue from these RabbitMQ nodes over AMQP 0-9-1
    # (tried in turn) instead of subscribing over MQTT; `receive_maximum` is the prefetch.
    amqp_urls: tuple[str, ...] = ()
    batch_size: int = 5000
    batch_interval: timedelta = timedelta(milliseconds=100)
    receive_maximum: int = 20_000
    session_expiry: timedelta = timedelta(days=1)
    max_payload: int = 64 * 1024
    max_age: timedelta = timedelta(days=7)
    max_future: timedelta = timedelta(minutes=5)
    registry_refresh: timedelta = timedelta(seconds=2)
    # A database call that has not returned by then fails and is retried on a new connection.
    store_timeout: timedelta = DEFAULT_TIMEOUT


@dataclass(slots=True)
class _Batch:
    generation: int
    rows: dict[str, list[Row]] = field(default_factory=dict)
    rejects: list[RejectRow] = field(default_factory=list)
    packet_ids: list[int] = field(default_factory=list)
    # (topic, payload, device type, row count) of each message whose rows are in `rows`, in
    # arrival order: what a batch the store refuses is split by, and its dead letters are
    # made of. Not the decoded rows: keeping a list per message costs ~0.8 µs a message,
    # ~15% of the receive path (objects for the garbage collector to walk), and the
    # message's rows are the next `row count` of its type's in `rows`.
    accepted: list[tuple[str, bytes, str, int]] = field(default_factory=list)
    statuses: dict[str, Status] = field(default_factory=dict)
    sealed_at: datetime | None = None


class Ingestor:
    """Runs one ingest process: subscribe, decode, batch, commit, then acknowledge."""

    def __init__(self, config: IngestConfig, *, metrics: IngestMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or IngestMetrics()
        self._registry = RegistrySnapshot(())
        self._writer = ReadingsWriter(
            config.database_url, name=f"ingest {config.client_id}", timeout=config.store_timeout
        )
        self._presence = PresenceWriter(
            config.database_url, name=f"presence {config.client_id}", timeout=config.store_timeout
        )
        self._subscriber: MqttSubscriber | AmqpSource
        filters = [shared_filter(""), shared_filter("", STATUS_FILTER)]
        if config.amqp_urls:
            self._subscriber = AmqpSource(
                config.amqp_urls,
                queue=queue_name(config.share_group),
                topic_filters=filters,
                prefetch=config.receive_maximum,
                on_publish=self._on_publish,
                name=config.client_id,
            )
        else:
            self._subscriber = self._mqtt_subscriber(config)
        self._batch: _Batch | None = None
        self._sealed: deque[_Batch] = deque()
        self._wakeup = asyncio.Event()
        self._paused = False
        self._window = self._new_window()
        self._window_at = time.monotonic()
        self._flush_timer: asyncio.TimerHandle | None = None
        self.committed_batches = 0
        self._store_ok = True

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until `stop` is set, then commit and acknowledge what is in hand."""
        await self._check_store()
        async with await self._registry_connection() as conn:
            try:
                with Deadline(self.config.store_timeout).watch(conn):
                    self._registry = await load_snapshot(conn)
            except psycopg.Error as exc:
                why = first_line(exc)
                raise IngestError(f"database: cannot load the registry: {why}") from exc
            logger.info("registry: %d active devices", len(self._registry))
            try:
                await self._subscriber.start()
            except MqttError as exc:
                raise IngestError(f"MQTT: {exc}") from exc
            self._log_started()
            tasks = [
                asyncio.create_task(self._write_loop(stop), name="ingest-writer"),
                asyncio.create_task(self._refresh_loop(conn, stop), name="registry-refresh"),
            ]
            try:
                await self._until_stopped(stop, tasks)
                self._seal()
                self._wakeup.set()
                await self._drain(tasks[0])
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._subscriber.stop()
                await self._writer.close()
                await self._presence.close()

    def _log_started(self) -> None:
        source = self._subscriber
        if isinstance(source, AmqpSource):
            logger.info(
                "ingest %s: subscribed to queue %s (bound to %s on amq.topic)"
                " over AMQP 0-9-1 at %s",
                self.config.client_id,
                source.queue,
                ", ".join(source.binding_keys),
                source.node,
            )
            return
        logger.info(
            "ingest %s: subscribed to %s over MQTT %s",
            self.config.client_id,
            shared_filter(self.config.share_group),
            source.url.protocol,
        )

    def _mqtt_subscriber(self, config: IngestConfig) -> MqttSubscriber:
        try:
            return MqttSubscriber(
                config.mqtt_url,
                client_id=config.client_id,
                topic_filters=[
                    shared_filter(config.share_group),
                    shared_filter(config.share_group, STATUS_FILTER),
                ],
                on_publish=self._on_publish,
                session_expiry=int(config.session_expiry.total_seconds()),
                receive_maximum=config.receive_maximum,
                clean_start=False,
            )
        except MqttError as exc:  # a broker URL that cannot be used
            raise IngestError(f"MQTT: {exc}") from exc

    async def _drain(self, writer: asyncio.Task[None]) -> None:
        """Commit and acknowledge what is in hand, unless the store stays away too long."""
        try:
            await asyncio.wait_for(asyncio.shield(writer), _SHUTDOWN_GRACE_S)
        except TimeoutError:
            pending = sum(len(b.packet_ids) for b in self._sealed)
            logger.warning(
                "stopping with %d message(s) unacknowledged: the broker redelivers them", pending
            )

    async def _until_stopped(self, stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for `stop`; a receive path or a task that failed ends the ingestor with its
        error. Messages in hand stay unacknowledged: the broker redelivers them to the same
        client id when the ingestor is restarted."""
        asked = asyncio.create_task(stop.wait())
        failed = asyncio.create_task(self._subscriber.wait_stopped())
        done, _ = await asyncio.wait({asked, failed, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        asked.cancel()
        failed.cancel()
        if failed in done:
            exc = failed.exception()
            raise IngestError(f"receive path stopped: {exc}") from exc
        for task in done & set(tasks):
            # A bug, never bad input or an outage (those are handled inside): left alone, the
            # ingestor would live on and store nothing, silently (found by tests/faults).
            exc = task.exception()
            if exc is not None:
                logger.error("%s failed", task.get_name(), exc_info=exc)
                raise IngestError(f"{task.get_name()} stopped: {exc!r}") from exc

    def health(self) -> tuple[bool, str]:
        """(healthy, why) for /healthz: subscribed to the broker and the last commit worked."""
        if not self._subscriber.connected.is_set():
            return False, "not connected to the broker"
        if not self._store_ok:
            return False, "the store refused the last commit; retrying"
        return True, f"ok: {self.committed_batches} batches committed"

    # -- receive path: runs for every publish, keep it lean -------------------------------

    def _on_publish(self, packet_id: int, topic: str, payload: bytes) -> None:
        now = time.monotonic()
        if now - self._window_at > _WINDOW_REFRESH_S:
            self._window = self._new_window()
            self._window_at = now
        batch = self._batch
        generation = self._subscriber.generation
        if batch is None or batch.generation != generation:
            if batch is not None:
                self._seal()
            batch = self._batch = _Batch(generation)
            self._flush_timer = asyncio.get_running_loop().call_later(
                self.config.batch_interval.total_seconds(), self._seal
            )
        if topic.endswith(STATUS_SUFFIX):
            self._on_status(batch, packet_id, topic, payload)
            return
        result = decode(
            topic, payload, self._registry, self._window, max_payload=self.config.max_payload
        )
        if isinstance(result, Accepted):
            rows = batch.rows.get(result.device_type)
            if rows is None:
                batch.rows[result.device_type] = result.rows
            else:
                rows.extend(result.rows)
            batch.accepted.append((topic, payload, result.device_type, len(result.rows)))
        else:
            batch.rejects.append(
                RejectRow(
                    self._window.now, topic, result.device_id, result.reason, result.detail, payload
                )
            )
        batch.packet_ids.append(packet_id)
        if len(batch.packet_ids) >= self.config.batch_size:
            self._seal()

    def _on_status(self, batch: _Batch, packet_id: int, topic: str, payload: bytes) -> None:
        # The clock itself, not the window's (it moves every 50 ms): a status stamped "now"
        # by the device must not count as ahead of us. Statuses are rare; the call is cheap.
        now = datetime.now(UTC)
        reject = take_status(batch.statuses, topic, payload, self._registry, now)
        if reject is not None:
            batch.rejects.append(reject)
        batch.packet_ids.append(packet_id)
        if len(batch.packet_ids) >= self.config.batch_size:
            self._seal()

    def _seal(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._batch = self._batch, None
        if batch is None or not batch.packet_ids:
            return
        batch.sealed_at = self._window.now
        self._sealed.append(batch)
        self._wakeup.set()
        if len(self._sealed) >= _MAX_SEALED and not self._paused:
            self._paused = True
            self._subscriber.pause_reading()

    def _new_window(self) -> Window:
        return Window.at(
            datetime.now(UTC), max_age=self.config.max_age, max_future=self.config.max_future
        )

    # -- write path ------------------------------------------------------------------------

    async def _write_loop(self, stop: asyncio.Event) -> None:
        while True:
            if not self._sealed:
                if stop.is_set():
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._sealed[0]
            self.metrics.pending.set(sum(len(b.packet_ids) for b in self._sealed))
            await self._commit(batch)
            await self._presence.write(batch.statuses, batch.rows, self._window.now)
            self._sealed.popleft()
            self._subscriber.ack(batch.packet_ids, batch.generation)
            if self._paused and len(self._sealed) < _MAX_SEALED:
                self._paused = False
                self._subscriber.resume_reading()

    async def _commit(self, batch: _Batch) -> None:
        backoff = Backoff(STORE_RETRY)
        failing_since: float | None = None
        last_said = 0.0
        while True:
            started = time.perf_counter()
            try:
                try:
                    result = await self._writer.write(batch.rows, batch.rejects)
                except StoreRefused as refused:
                    result = await self._set_aside_refused(batch, refused)
            except (StoreUnavailable, StoreError) as exc:
                self.metrics.store_up.set(0)
                self._store_ok = False
                if failing_since is None:
                    # From the start of the failed attempt: a call on a silent link fails
                    # only at the store deadline, and the outage began before that.
                    failing_since = time.monotonic() - (time.perf_counter() - started)
                    logger.warning(
                        "%s; holding %d message(s) unacknowledged, retrying",
                        exc,
                        len(batch.packet_ids),
                    )
                    # The presence connection shares the store's path: one idle through the
                    # outage may be dead without knowing it, and would hold the write loop
                    # for a whole store deadline after the store is back.
                    await self._presence.close()
                    last_said = time.monotonic()
                elif time.monotonic() - last_said >= _STILL_FAILING_EVERY_S:
                    last_said = time.monotonic()
                    logger.warning(
                        "store still unavailable after %.0f s: %s",
                        last_said - failing_since,
                        exc,
                    )
                await backoff.sleep()
                continue
            self.metrics.store_up.set(1)
            self._store_ok = True
            if failing_since is not None:
                logger.warning(
                    "store is back after %.1f s; resuming", time.monotonic() - failing_since
                )
            m = self.metrics
            m.batch_seconds.observe(time.perf_counter() - started)
            m.received.inc(len(batch.packet_ids))
            m.stored.inc(len(batch.accepted))
            m.rows.inc(result.stored)
            m.duplicates.inc(result.duplicates)
            for reject in batch.rejects:
                m.rejected.labels(reject.reason).inc()
            self.committed_batches += 1
            return

    async def _set_aside_refused(self, batch: _Batch, refused: StoreRefused) -> WriteResult:
        """Commit the batch but the messages the store refuses for good, dead-lettered as
        store_refused; then count them as dead letters of the batch, not as accepted (its
        rows stay, for presence: the devices did speak)."""
        accepted = batch.accepted
        received_at = batch.sealed_at or self._window.now
        # Each message's rows: the next `count` of its type's, in arrival order.
        messages: list[tuple[str, list[Row]]] = []
        taken: dict[str, int] = {}
        for _, _, device_type, count in accepted:
            start = taken.get(device_type, 0)
            taken[device_type] = start + count
            messages.append((device_type, batch.rows[device_type][start : start + count]))

        def dead_letter(index: int, why: str) -> RejectRow:
            topic, payload, _, _ = accepted[index]
            return RejectRow(received_at, topic, device_id_of(topic), STORE_REFUSED, why, payload)

        done = await self._writer.write_isolating(
            messages, batch.rejects, dead_letter, refused=refused
        )
        self.metrics.refused_batches.inc()
        self.metrics.refused_probes.inc(done.probes)
        if not done.refused:
            logger.warning(
                "ingest %s: the store refused a batch of %d message(s) (%s), but none of them"
                " on its own: stored them all",
                self.config.client_id,
                len(accepted),
                refused.why,
            )
            return done.result
        whys = {r.detail for _, r in done.refused}
        logger.warning(
            "ingest %s: the store refused %d of %d message(s) for good: %s%s;"
            " dead-lettered as %s, stored the rest (%d part(s) of the batch tried)",
            self.config.client_id,
            len(done.refused),
            len(accepted),
            done.refused[0][1].detail,
            f" (and {len(whys) - 1} other error(s))" if len(whys) > 1 else "",
            STORE_REFUSED,
            done.probes,
        )
        gone = {i for i, _ in done.refused}
        batch.accepted = [m for i, m in enumerate(accepted) if i not in gone]
        batch.rejects = [*batch.rejects, *(r for _, r in done.refused)]
        return done.result

    # -- registry ----------------------------------------------------------------------------

    async def _refresh_loop(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        interval = self.config.registry_refresh.total_seconds()
        while not stop.is_set():
            await asyncio.sleep(interval)
            deadline = Deadline(self.config.store_timeout)
            try:
                with deadline.watch(conn):
                    if await registry_version(conn) != self._registry.version:
                        self._registry = await load_snapshot(conn)
                        logger.info("registry reloaded: %d active devices", len(self._registry))
            except psycopg.Error as exc:
                why = deadline.describe() if deadline.expired else exc
                logger.warning("registry refresh failed, keeping the last snapshot: %s", why)
                if conn.closed or conn.broken:
                    conn = await self._registry_connection(retry=True)

    async def _registry_connection(self, *, retry: bool = False) -> psycopg.AsyncConnection[Any]:
        backoff = Backoff(STORE_RETRY)
        while True:
            try:
                return await psycopg.AsyncConnection.connect(
                    self.config.database_url,
                    autocommit=True,
                    application_name="silobreak-registry",
                    **connect_kwargs(self.config.database_url, self.config.store_timeout),
                )
            except psycopg.OperationalError as exc:
                if not retry:
                    raise IngestError(f"database: {first_line(exc)}") from exc
                await backoff.sleep()

    async def _check_store(self) -> None:
        try:
            await self._writer.connect()
        except StoreError as exc:
            raise IngestError(str(exc)) from exc
