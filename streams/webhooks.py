"""Webhook delivery: the target allow-list, HMAC signatures, and one batch sent until acked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import httpx
import msgspec
import psycopg

from retries import Backoff, Policy
from streams import audit, client, urls
from streams.errors import StreamsError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = client.SIGNATURE_HEADER
TIMESTAMP_HEADER: Final = client.TIMESTAMP_HEADER
SUBSCRIPTION_HEADER: Final = client.SUBSCRIPTION_HEADER
IDEMPOTENCY_HEADER: Final = client.IDEMPOTENCY_HEADER
# A receiver that has not answered by then is treated as down (and the batch retried).
REQUEST_TIMEOUT_S: Final = 10.0


class WebhookAbandoned(StreamsError):
    """A batch kept failing past the give-up time; the subscription stops."""


class FeedGone(StreamsError):
    """The feed closed (grant revoked or expired) while a batch waited for a retry."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A batch written but not acknowledged before a restart."""

    seq: int
    body: bytes
    cursor: str
    readings: int
    phase: str


class _Head(msgspec.Struct):
    phase: str = ""


def allowed(url: str, allow: Sequence[str]) -> bool:
    """Whether `url`, in its normal form, falls under one of the allow-list's prefixes
    (streams.urls: dot segments removed, encoded separators refused, segments compared)."""
    return urls.allowed(url, allow)


def sign(secret: str, *, timestamp: str, subscription: str, key: str, body: bytes) -> str:
    """`v2=<hex>`: HMAC-SHA256 over the timestamp, the subscription, the idempotency key and
    the body (streams.client.signed_message), so no part can be swapped for another's."""
    return client.sign_webhook(
        secret, timestamp=timestamp, subscription=subscription, key=key, body=body
    )


def verify(
    secret: str,
    headers: Any,
    body: bytes,
    *,
    subscription: str | None = None,
    now: float | None = None,
    tolerance: float = client.WEBHOOK_TOLERANCE_S,
) -> bool:
    """For receivers: whether a delivery is ours, recent, and (when given) for `subscription`.

    The reference verifier is streams.client.verify_webhook; this is the same function."""
    return client.verify_webhook(
        secret, headers, body, subscription=subscription, now=now, tolerance=tolerance
    )


class WebhookSender:
    """Sends one subscription's batches in order; a batch is retried until a 2xx."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        client: httpx.AsyncClient,
        *,
        subscription_id: str,
        url: str,
        secret: str,
        retry: Policy,
    ) -> None:
        self._conn = conn
        self._client = client
        self.subscription_id = subscription_id
        self.url = url
        self._secret = secret
        self._retry = retry

    async def pending(self) -> Pending | None:
        """The batch written but not acknowledged before a restart, if any."""
        cur = await self._conn.execute(
            "SELECT seq, body, cursor_to, readings FROM webhook_deliveries"
            " WHERE subscription_id = %s AND status = 'pending' ORDER BY seq LIMIT 1",
            (self.subscription_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        body = bytes(row[1])
        phase = msgspec.json.decode(body, type=_Head).phase
        return Pending(row[0], body, row[2], row[3], phase)

    async def record(self, body: bytes, cursor_to: str, readings: int) -> int:
        """Write the batch before the first attempt; returns its sequence number."""
        cur = await self._conn.execute(
            "INSERT INTO webhook_deliveries"
            " (subscription_id, seq, idempotency_key, cursor_to, readings, body)"
            " SELECT %(s)s, n, %(s)s || '-' || n, %(c)s, %(r)s, %(b)s FROM"
            " (SELECT coalesce(max(seq), 0) + 1 AS n FROM webhook_deliveries"
            "  WHERE subscription_id = %(s)s) AS next RETURNING seq",
            {"s": self.subscription_id, "c": cursor_to, "r": readings, "b": body},
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def send(
        self,
        seq: int,
        body: bytes,
        cursor_to: str,
        closed: Callable[[], str | None],
        event: audit.Event,
        *,
        resent: bool = False,
    ) -> int:
        """POST until a 2xx; then, in one transaction, the batch is delivered, the cursor moves
        and `event` goes on record. Returns the attempts.

        `resent`: the batch is sent again from its pending row after a restart (the receiver
        may have had it under this key already); it is on record as a redelivery.
        """
        backoff = Backoff(self._retry)  # its give-up clock starts with the first try
        attempt = 0
        while True:
            if closed() is not None:
                raise FeedGone(closed())
            attempt += 1
            error = await self._attempt(seq, body)
            if error is None:
                await self._acked(seq, cursor_to, attempt, event, resent=resent)
                return attempt
            await self._conn.execute(
                "UPDATE webhook_deliveries SET attempts = %s, last_error = %s"
                " WHERE subscription_id = %s AND seq = %s",
                (attempt, error[:500], self.subscription_id, seq),
            )
            if backoff.exhausted:
                await self._conn.execute(
                    "UPDATE webhook_deliveries SET status = 'abandoned'"
                    " WHERE subscription_id = %s AND seq = %s",
                    (self.subscription_id, seq),
                )
                raise WebhookAbandoned(f"webhook {self.url}: batch {seq} failed: {error}")
            delay = backoff.next()
            logger.info(
                "webhook %s: batch %d failed (%s); retry in %.1fs", self.url, seq, error, delay
            )
            await asyncio.sleep(delay)

    async def _attempt(self, seq: int, body: bytes) -> str | None:
        timestamp = str(int(time.time()))
        key = f"{self.subscription_id}-{seq}"
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: key,
            SUBSCRIPTION_HEADER: self.subscription_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(
                self._secret, timestamp=timestamp, subscription=self.subscription_id,
                key=key, body=body,
            ),
        }  # fmt: skip
        try:
            response = await self._client.post(
                self.url, content=body, headers=headers, timeout=REQUEST_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _acked(
        self, seq: int, cursor_to: str, attempts: int, event: audit.Event, *, resent: bool
    ) -> None:
        detail = {**event.detail, "key": f"{self.subscription_id}-{seq}", "attempts": attempts}
        if resent or attempts > 1:
            detail["redelivery"] = True  # this key was POSTed before
        async with self._conn.transaction():
            await self._conn.execute(
                "UPDATE webhook_deliveries SET status = 'delivered', attempts = %s,"
                " delivered_at = now(), body = NULL WHERE subscription_id = %s AND seq = %s",
                (attempts, self.subscription_id, seq),
            )
            await audit.record_delivery(self._conn, cursor_to, replace(event, detail=detail))
