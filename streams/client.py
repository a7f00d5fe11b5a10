"""A small Python client of the streams API: grants, history, and `async for` subscriptions.

    async with StreamsClient("http://127.0.0.1:8080", token) as client:
        async for reading in client.subscribe(grant_id=7, since=an_hour_ago):
            ...

A subscription resumes where it left off when the connection drops (SSE `Last-Event-ID`),
and acknowledges its position as it goes, so a restarted consumer resumes there too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import httpx

from retries import Backoff, Policy
from streams.errors import StreamsError

logger = logging.getLogger(__name__)

# Reconnect backoff after a dropped stream: soon after a blip, at most every 10 s after;
# jittered, so the clients of a restarted server do not all come back at one instant.
RECONNECT: Final = Policy(first=0.5, cap=10.0)
# Longer than the server's 15 s heartbeat: silence past it means a dead connection.
READ_TIMEOUT_S: Final = 45.0


# Webhook deliveries (docs/streams.md, Webhooks): the headers, and how old a signed delivery
# may be. Five minutes covers clock skew between hosts and a receiver's own queueing; a
# captured delivery replayed later than that is refused, and within it the receiver's
# Idempotency-Key deduplication refuses it (the key is signed, so it cannot be changed).
SIGNATURE_HEADER: Final = "X-Silobreak-Signature"
TIMESTAMP_HEADER: Final = "X-Silobreak-Timestamp"
SUBSCRIPTION_HEADER: Final = "X-Silobreak-Subscription"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
WEBHOOK_TOLERANCE_S: Final = 300.0
_SIGNATURE_VERSION: Final = "v2"


def signed_message(*, timestamp: str, subscription: str, key: str, body: bytes) -> bytes:
    """What a webhook signature covers: `v2`, the timestamp, the subscription id and the
    idempotency key, one per line, then the body."""
    head = "\n".join((_SIGNATURE_VERSION, timestamp, subscription, key)) + "\n"
    return head.encode() + body


def sign_webhook(secret: str, *, timestamp: str, subscription: str, key: str, body: bytes) -> str:
    """The `X-Silobreak-Signature` value: `v2=` and the hex HMAC-SHA256 of signed_message."""
    message = signed_message(timestamp=timestamp, subscription=subscription, key=key, body=body)
    mac = hmac.new(secret.encode(), message, hashlib.sha256)
    return f"{_SIGNATURE_VERSION}={mac.hexdigest()}"


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    subscription: str | None = None,
    now: float | None = None,
    tolerance: float = WEBHOOK_TOLERANCE_S,
) -> bool:
    """The reference verifier of a webhook delivery: whether it is signed with `secret`, its
    timestamp is within `tolerance` seconds of `now`, and (when given) it is for `subscription`.

    Receivers also keep the Idempotency-Keys they processed (for longer than `tolerance`) and
    skip a key seen before: that refuses a replay inside the tolerance, and a redelivery."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    sub = headers.get(SUBSCRIPTION_HEADER, "")
    key = headers.get(IDEMPOTENCY_HEADER, "")
    if not timestamp.isdigit() or not sub or not key.startswith(f"{sub}-"):
        return False
    if subscription is not None and sub != subscription:
        return False
    at = time.time() if now is None else now
    if abs(at - int(timestamp)) > tolerance:
        return False
    expected = sign_webhook(secret, timestamp=timestamp, subscription=sub, key=key, body=body)
    return hmac.compare_digest(expected, headers.get(SIGNATURE_HEADER, ""))


class ClientError(StreamsError):
    """The API refused a request: `status`, and the server's `reason` and `detail`."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


class SubscriptionEnded(StreamsError):
    """The server ended the feed: its grant was revoked or expired, or it was deleted."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"subscription ended: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE `readings` event: the readings and the cursor that follows them."""

    cursor: str
    phase: str
    readings: list[dict[str, Any]]
    # The terms of the grant the readings come under (docs/organisations.md).
    terms: dict[str, Any] = field(default_factory=dict)


class StreamsClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    async def __aenter__(self) -> StreamsClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:  # fmt: skip
        """JSON in, JSON out; a ClientError for anything but a 2xx."""
        response = await self._http.request(
            method, path, params=_params(params), json=_jsonable(body)
        )
        _raise_for(response)
        return None if response.status_code == 204 else response.json()

    # -- grants ---------------------------------------------------------------------------

    async def grants(self, status: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request(
            "GET", "/v1/grants", params={"status": status}
        )
        return result

    async def create_grant(self, **spec: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/v1/grants", body=spec)
        return result

    async def regional(self, **query: Any) -> dict[str, Any]:
        """Pools across the caller's district-pooled grants (docs/organisations.md): `rows`
        of district pools, organisation totals and the regional total, and each grant's
        `terms`."""
        result: dict[str, Any] = await self.request("GET", "/v1/regional", params=query)
        return result

    async def flows(self, days: int = 7, direction: str | None = None) -> list[dict[str, Any]]:
        """A coordinator's data flows: readings per day and grant, in and out."""
        result: list[dict[str, Any]] = await self.request(
            "GET", "/v1/flows", params={"days": days, "direction": direction}
        )
        return result

    async def grant_odrl(self, grant_id: int) -> dict[str, Any]:
        """The grant as an ODRL 2.2 Agreement (JSON-LD)."""
        result: dict[str, Any] = await self.request("GET", f"/v1/grants/{grant_id}/odrl")
        return result

    async def request_odrl(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        """Request a grant by an ODRL Offer or Request (docs/contracts.md)."""
        result: dict[str, Any] = await self.request("POST", "/v1/grants/odrl", body=policy)
        return result

    async def decide(self, grant_id: int, verb: str, note: str = "") -> dict[str, Any]:
        """`verb`: approve, accept, refuse or revoke."""
        result: dict[str, Any] = await self.request(
            "POST", f"/v1/grants/{grant_id}/{verb}", body={"note": note}
        )
        return result

    # -- history --------------------------------------------------------------------------

    async def history(self, **query: Any) -> AsyncIterator[dict[str, Any]]:
        """Every reading (or aggregate) of the range, page after page."""
        after = None
        while True:
            page = await self.request("GET", "/v1/history", params={**query, "after": after})
            for reading in page["readings"]:
                yield reading
            after = page["next_after"]
            if after is None:
                return

    # -- subscriptions --------------------------------------------------------------------

    async def create_subscription(self, **spec: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/v1/subscriptions", body=spec)
        return result

    async def ack(self, subscription_id: str, cursor: str) -> None:
        await self.request(
            "POST", f"/v1/subscriptions/{subscription_id}/ack", body={"cursor": cursor}
        )

    async def subscribe(
        self, *, subscription_id: str | None = None, ack: bool = True, **spec: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Readings of a new SSE subscription (from `spec`) or an existing one, forever."""
        if subscription_id is None:
            created = await self.create_subscription(delivery="sse", **spec)
            subscription_id = str(created["id"])
        events = self.events(subscription_id, ack=ack)
        async with contextlib.aclosing(events):
            async for event in events:
                for reading in event.readings:
                    yield reading

    async def events(
        self, subscription_id: str, *, cursor: str | None = None, ack: bool = True
    ) -> AsyncGenerator[Event, None]:
        """SSE events; reconnects after a drop, resuming after the last event received."""
        last = cursor
        backoff = Backoff(RECONNECT)
        while True:
            stream = self._stream(subscription_id, last)
            try:
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        backoff.reset()
                        yield event
                        last = event.cursor
                        if ack:
                            await self.ack(subscription_id, last)
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                logger.info("subscription %s: %s; reconnecting", subscription_id, exc)
                await backoff.sleep()

    async def _stream(self, subscription_id: str, last: str | None) -> AsyncGenerator[Event, None]:
        headers = {"Last-Event-ID": last} if last else {}
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
        path = f"/v1/subscriptions/{subscription_id}/events"
        async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code >= 300:
                await response.aread()
                _raise_for(response)
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line:
                    name, _, value = line.partition(":")
                    if name:
                        fields[name] = value.removeprefix(" ")
                    continue
                kind, data, event_id = fields.get("event"), fields.get("data"), fields.get("id")
                fields = {}
                if kind == "end":
                    raise SubscriptionEnded(json.loads(data or "{}").get("reason", "ended"))
                if kind == "readings" and data is not None and event_id is not None:
                    body = json.loads(data)
                    yield Event(event_id, body["phase"], body["readings"], body.get("terms", {}))
        raise httpx.RemoteProtocolError("the server closed the event stream")


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 300:
        return
    try:
        body = response.json()
        reason, detail = str(body.get("reason")), str(body.get("detail"))
    except ValueError:
        reason, detail = "http_error", response.text[:200]
    raise ClientError(response.status_code, reason, detail)


def _params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in (params or {}).items() if v is not None}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
