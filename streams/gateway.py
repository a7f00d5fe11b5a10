"""A streams gateway: the live hub, the access audit of SSE batches, and webhook and MQTT
workers.

Gateways are stateless: grants, subscriptions and cursors are in PostgreSQL. Each webhook or
MQTT subscription is delivered by one gateway at a time, the one holding its advisory lock
(released with the gateway's connection if it dies).

Every delivery batch is on record (`audit_log`, action `delivery.batch`) before a restart can
lose it: a webhook or MQTT batch in the statement that moves its subscription's cursor, once
the receiver or the broker acknowledged it; an SSE batch before it is written to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import httpx
import msgspec
import psycopg
from fastapi import Depends, Request

from retries import Backoff, Policy
from streams import audit, cursor, grants, subscriptions, urls
from streams.errors import ApiError
from streams.live import Batch, Feed, FeedClosed, Hub
from streams.mqtt_delivery import MqttDelivery, MqttDeliveryError
from streams.pool import Pool, new_pool
from streams.scope import Grant
from streams.subscriptions import Subscription
from streams.webhooks import FeedGone, WebhookAbandoned, WebhookSender

logger = logging.getLogger(__name__)

ACTOR: Final = "streams"
# How often the gateway looks for webhook and MQTT subscriptions to take on, and expires
# grants: a new subscription starts within this, and an expired grant is marked within it.
SCAN_S: Final = 1.0
# A failed MQTT publish is retried within a second (the broker reconnecting): no longer
# apart, so delivery resumes as soon as the broker is back; jittered, so the gateways'
# feeds do not all publish again at one instant.
MQTT_RETRY: Final = Policy(first=1.0, cap=1.0)
_ENCODER: Final = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class StreamsConfig:
    """What a gateway is configured with (silobreak.settings.streams_config makes it)."""

    database_url: str
    mqtt_url: str | None = None
    min_pool: int = 5
    poll_interval: timedelta = timedelta(milliseconds=250)
    aggregate_grace: timedelta = timedelta(seconds=5)
    webhook_allow: tuple[str, ...] = ()
    webhook_retry: Policy = field(
        default_factory=lambda: Policy(
            first=0.5, cap=60.0, give_up=timedelta(days=1).total_seconds()
        )
    )


def encode_batch(sub_id: str, batch: Batch, terms: Mapping[str, Any]) -> bytes:
    """The JSON body of a webhook or MQTT delivery, with the terms of the grant it comes under."""
    return _ENCODER.encode(
        {"subscription": sub_id, "cursor": batch.cursor, "phase": batch.phase,
         "terms": terms, "readings": batch.readings}
    )  # fmt: skip


class Gateway:
    """Runs the hub and the deliveries of one process; opened and closed with the API."""

    def __init__(self, config: StreamsConfig, *, pool: Pool | None = None) -> None:
        """`pool`: the API's (the feeds' pages share it); without one the gateway opens its
        own with `start()` and closes it with `stop()`."""
        self.config = config
        self._own_pool = pool is None
        self.pool = new_pool(config.database_url) if pool is None else pool
        self.hub = Hub(
            config.database_url,
            pool=self.pool,
            poll_interval=config.poll_interval,
            min_pool=config.min_pool,
            aggregate_grace=config.aggregate_grace,
        )
        self.recorder = audit.Recorder(config.database_url)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._lease: psycopg.AsyncConnection[Any] | None = None
        self._mqtt: MqttDelivery | None = None
        self._mqtt_lock = asyncio.Lock()
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._own_pool:
            await self.pool.open(wait=False)
        self._http = httpx.AsyncClient()
        self._tasks = [
            asyncio.create_task(self.hub.run(self._stop), name="streams-hub"),
            asyncio.create_task(self.recorder.run(), name="streams-audit"),
            asyncio.create_task(self._supervise(), name="streams-deliveries"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self.recorder.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._lease is not None:
            await self._lease.close()
        if self._mqtt is not None:
            await self._mqtt.close()
        if self._http is not None:
            await self._http.aclose()
        if self._own_pool:
            await self.pool.close()

    def sending(
        self, feed: Feed, sub: Subscription, batch: Batch, *, resumed_from: str | None = None
    ) -> asyncio.Future[None]:
        """Put an SSE batch on record; send it once the future is done (the row committed)."""
        return self.recorder.write(delivery_event(feed.grant, sub, batch, resumed_from))

    def feed(self, grant: Grant, sub: Subscription, position: str) -> Feed:
        return Feed(
            self.hub, grant, subscriptions.scopes(grant, sub), cursor.decode(position), name=sub.id
        )

    async def closed(self, g: Grant, sub: Subscription, reason: str) -> None:
        """A feed ended (its grant, or a webhook given up on): the subscription stops, on
        record in the same transaction (once, however many feeds it had)."""
        async with self.pool.connection() as conn, conn.transaction():
            if await subscriptions.stop(conn, sub.id, reason):
                await audit.record(
                    conn,
                    audit.Event(ACTOR, "subscription.stop", g.owner, g.consumer, g.id, sub.id, 0,
                                {"reason": reason}),
                )  # fmt: skip

    async def _supervise(self) -> None:
        """Take on webhook and MQTT subscriptions; expire grants that are due."""
        while not self._stop.is_set():
            try:
                await self._scan()
            except psycopg.OperationalError as exc:
                logger.warning("streams deliveries: store unavailable: %s", exc)
                if self._lease is not None:
                    await self._lease.close()
                self._lease = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SCAN_S):
                    await self._stop.wait()

    async def _scan(self) -> None:
        if self._lease is None or self._lease.closed:
            self._lease = await psycopg.AsyncConnection.connect(
                self.config.database_url, autocommit=True,
                application_name="silobreak-streams-lease",
            )  # fmt: skip
            self._workers.clear()
        conn = self._lease
        await grants.expire_due(conn, actor=ACTOR)
        wanted = {s.id: s for s in await subscriptions.for_delivery(conn)}
        for sub_id, task in list(self._workers.items()):
            if sub_id not in wanted or task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                del self._workers[sub_id]
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (sub_id,))
        for sub_id, sub in wanted.items():
            if sub_id in self._workers:
                continue
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (sub_id,)
            )
            row = await cur.fetchone()
            if row is not None and row[0]:
                self._workers[sub_id] = asyncio.create_task(
                    self._deliver(sub), name=f"streams-{sub.delivery}-{sub_id}"
                )

    async def _deliver(self, sub: Subscription) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.config.database_url, autocommit=True, application_name="silobreak-streams-worker"
        ) as conn:
            grant = await grants.get(conn, sub.grant_id)
            fresh = await subscriptions.for_delivery(conn)
            position = next((s.cursor for s in fresh if s.id == sub.id), sub.cursor)
            try:
                # A grant revoked or expired while no gateway ran: nothing more is sent, not
                # even a pending webhook batch (the hub would only close the feed a tick late).
                check_active(grant)
                if sub.delivery == "webhook":
                    await self._webhook(conn, grant, sub, position)
                else:
                    await self._mqtt_deliver(conn, grant, sub, position)
            except (FeedClosed, FeedGone) as exc:
                reason = exc.reason if isinstance(exc, FeedClosed) else str(exc)
                await self.closed(await grants.get(conn, sub.grant_id), sub, reason)
            except WebhookAbandoned as exc:
                logger.warning("%s", exc)
                await self.closed(grant, sub, str(exc))

    async def _webhook(
        self, conn: psycopg.AsyncConnection[Any], grant: Grant, sub: Subscription, at: str
    ) -> None:
        assert self._http is not None
        assert sub.webhook_url is not None
        assert sub.secret is not None
        # Checked again at every start, in normal form, and sent to that form: a URL stored
        # before the allow-list changed (or before URLs were normalised) goes nowhere else.
        url = _webhook_url(sub.webhook_url, self.config.webhook_allow)
        sender = WebhookSender(
            conn, self._http, subscription_id=sub.id, url=url, secret=sub.secret,
            retry=self.config.webhook_retry,
        )  # fmt: skip
        feed = self.feed(grant, sub, at)
        terms = grant.terms()
        pending = await sender.pending()
        if pending is not None:
            # Sent before a restart but never acknowledged: the same batch, the same key, on
            # record as a redelivery once acknowledged. The hub watches the grant meanwhile.
            batch = Batch([], pending.cursor, pending.phase)
            event = delivery_event(grant, sub, batch, readings=pending.readings)
            self.hub.watch(feed)
            try:
                await sender.send(
                    pending.seq, pending.body, pending.cursor, lambda: feed.closed, event,
                    resent=True,
                )  # fmt: skip
            finally:
                self.hub.unwatch(feed)
            feed = self.feed(grant, sub, pending.cursor)
        async for batch in _batches(feed):
            if not batch.readings:
                continue
            body = encode_batch(sub.id, batch, terms)
            seq = await sender.record(body, batch.cursor, len(batch.readings))
            event = delivery_event(grant, sub, batch)
            await sender.send(seq, body, batch.cursor, lambda: feed.closed, event)

    async def _mqtt_client(self) -> MqttDelivery:
        """The gateway's one MQTT connection, made by the first worker that needs it.

        Published only once connected: workers starting together wait on the lock instead of
        publishing on a client whose CONNACK has not come yet.
        """
        async with self._mqtt_lock:
            if self._mqtt is None:
                if self.config.mqtt_url is None:
                    raise MqttDeliveryError("no MQTT broker configured for the streams gateway")
                client = MqttDelivery(self.config.mqtt_url)
                await client.connect()
                self._mqtt = client
            return self._mqtt

    async def _mqtt_deliver(
        self, conn: psycopg.AsyncConnection[Any], grant: Grant, sub: Subscription, at: str
    ) -> None:
        mqtt = await self._mqtt_client()
        assert sub.topic is not None
        feed = self.feed(grant, sub, at)
        terms = grant.terms()
        # The first batch of this run carries the position it resumed from: it may repeat
        # the readings of a batch the broker acknowledged just before the previous run ended,
        # whose cursor (and so whose record) never moved.
        resumed_from: str | None = at
        async for batch in _batches(feed):
            if not batch.readings:
                continue
            body = encode_batch(sub.id, batch, terms)
            backoff = Backoff(MQTT_RETRY)
            while True:
                if feed.closed is not None:
                    raise FeedClosed(feed.closed)
                try:
                    await mqtt.publish(sub.topic, body)
                    break
                except MqttDeliveryError as exc:
                    logger.warning("MQTT delivery %s: %s; retrying", sub.id, exc)
                    await backoff.sleep()
            event = delivery_event(grant, sub, batch, resumed_from, redelivery=backoff.attempts > 0)
            # The broker has it: the cursor moves and the batch is on record, in one statement.
            await audit.record_delivery(conn, batch.cursor, event)
            resumed_from = None


def delivery_event(
    grant: Grant,
    sub: Subscription,
    batch: Batch,
    resumed_from: str | None = None,
    *,
    readings: int | None = None,
    redelivery: bool = False,
) -> audit.Event:
    """The record of one delivery batch (`readings` when the batch's own are not at hand)."""
    detail: dict[str, Any] = {"delivery": sub.delivery, "phase": batch.phase,
                              "cursor": batch.cursor}  # fmt: skip
    if resumed_from is not None:
        detail["resumed_from"] = resumed_from
    if redelivery:
        detail["redelivery"] = True
    count = len(batch.readings) if readings is None else readings
    return audit.Event(
        ACTOR, "delivery.batch", grant.owner, grant.consumer, grant.id, sub.id, count, detail
    )


def check_active(grant: Grant) -> None:
    """FeedClosed unless the grant is active, as the hub sees it (past its expiry: expired)."""
    state = grant.status
    if state == "active" and grant.expires_at <= datetime.now(UTC):
        state = "expired"
    if state != "active":
        raise FeedClosed(f"grant_{state}")


def _webhook_url(url: str, allow: tuple[str, ...]) -> str:
    """The normal form of a stored webhook URL; FeedClosed when it is no longer allowed."""
    try:
        target = urls.normalise(url)
    except urls.UrlRefused:
        raise FeedClosed("webhook_not_allowed") from None
    if not urls.matching(target, allow):
        raise FeedClosed("webhook_not_allowed")
    return target.url


async def _batches(feed: Feed) -> AsyncIterator[Batch]:
    async for batch in feed.batches():
        yield batch


def _gateway(request: Request) -> Gateway:
    gateway: Gateway | None = getattr(request.app.state, "streams", None)
    if gateway is None:
        raise ApiError(503, "streams_not_started", "the streams gateway is not running")
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
