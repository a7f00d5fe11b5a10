"""`/v1/subscriptions`: live feeds within a grant, by SSE, webhook or MQTT; resumable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from streams import grants, subscriptions
from streams.auth import CallerDep
from streams.errors import ApiError
from streams.gateway import Gateway, GatewayDep
from streams.live import Batch, Feed, FeedClosed
from streams.routes_grants import DeviceType
from streams.subscriptions import Subscription

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"])

# A comment line this often keeps proxies and clients from closing an idle stream.
HEARTBEAT_S: Final = 15.0
# Batches read ahead of a slow SSE client; the feed itself holds more (streams.live).
SSE_AHEAD: Final = 2
_ENCODER: Final = msgspec.json.Encoder()
SubId = Annotated[str, Path(pattern=r"^s[0-9a-f]{16}$")]


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grant_id: Annotated[int, Field(ge=1, le=2**62)]
    device_types: Annotated[
        list[DeviceType],
        Field(max_length=200, description="empty: every type of the grant"),
    ] = []
    metrics: Annotated[list[str], Field(max_length=32, description="empty: all granted")] = []
    districts: Annotated[list[str], Field(max_length=500, description="empty: all granted")] = []
    delivery: Literal["sse", "webhook", "mqtt"]
    webhook_url: Annotated[str | None, Field(max_length=2000)] = None
    since: Annotated[
        AwareDatetime | None, Field(description="replay history from here, then go live")
    ] = None


class SubscriptionOut(BaseModel):
    id: str
    consumer: str
    grant_id: int
    device_types: list[str]
    metrics: list[str]
    districts: list[str] | None
    delivery: str
    webhook_url: str | None
    # The webhook signing key: returned once, when the subscription is created.
    secret: str | None
    # Where MQTT delivery publishes (readable by the consumer alone).
    topic: str | None
    cursor: str
    status: str
    note: str
    created_at: datetime


class Ack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cursor: Annotated[str, Field(min_length=2, max_length=100_000)]


@router.post("", status_code=201, response_model=SubscriptionOut)
async def create_subscription(
    request: Request, caller: CallerDep, gateway: GatewayDep, body: SubscriptionIn
) -> SubscriptionOut:
    """Subscribe within a grant; with `since`, history from then is replayed first."""
    spec = subscriptions.SubscriptionSpec(
        grant_id=body.grant_id,
        device_types=tuple(body.device_types),
        metrics=tuple(body.metrics),
        districts=tuple(body.districts),
        delivery=body.delivery,
        webhook_url=body.webhook_url,
        since=body.since,
    )
    async with request.app.state.pool.connection() as conn:
        sub = await subscriptions.create(
            conn, caller, spec, webhook_allow=gateway.config.webhook_allow
        )
    return _out(sub, secret=True)


@router.get("", response_model=list[SubscriptionOut])
async def list_subscriptions(request: Request, caller: CallerDep) -> list[SubscriptionOut]:
    async with request.app.state.pool.connection() as conn:
        found = await subscriptions.mine(conn, caller)
    return [_out(s) for s in found]


@router.get("/{sub_id}", response_model=SubscriptionOut)
async def get_subscription(request: Request, caller: CallerDep, sub_id: SubId) -> SubscriptionOut:
    async with request.app.state.pool.connection() as conn:
        return _out(await subscriptions.get(conn, caller, sub_id))


@router.delete("/{sub_id}", status_code=204)
async def delete_subscription(request: Request, caller: CallerDep, sub_id: SubId) -> Response:
    async with request.app.state.pool.connection() as conn:
        await subscriptions.delete(conn, caller, sub_id)
    return Response(status_code=204)


@router.post("/{sub_id}/ack", response_model=SubscriptionOut)
async def acknowledge(
    request: Request, caller: CallerDep, sub_id: SubId, body: Ack
) -> SubscriptionOut:
    """Record the last position the consumer has processed; it resumes after it."""
    async with request.app.state.pool.connection() as conn:
        await subscriptions.acknowledge(conn, caller, sub_id, body.cursor)
        return _out(await subscriptions.get(conn, caller, sub_id))


@router.get(
    "/{sub_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(
    request: Request,
    caller: CallerDep,
    gateway: GatewayDep,
    sub_id: SubId,
    last_event_id: Annotated[str | None, Header(max_length=100_000)] = None,
    at: Annotated[str | None, Query(alias="cursor", max_length=100_000)] = None,
) -> StreamingResponse:
    """Server-sent events: `readings` events (id = cursor after them), then `end` with a reason.

    Resumes after `Last-Event-ID` (or `cursor`), else after the last acknowledged position.
    """
    async with request.app.state.pool.connection() as conn:
        sub = await subscriptions.get(conn, caller, sub_id)
        if sub.delivery != "sse":
            raise ApiError(409, "not_sse", f"subscription {sub_id} is delivered by {sub.delivery}")
        if sub.status != "active":
            raise ApiError(410, "subscription_stopped", f"{sub_id} stopped: {sub.note}")
        grant = await grants.usable(conn, caller, sub.grant_id)
        position = last_event_id or at or sub.cursor
        await subscriptions.check_position(conn, sub, position)
    feed = gateway.feed(grant, sub, position)
    return StreamingResponse(
        _sse(gateway, feed, sub, position),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(
    gateway: Gateway, feed: Feed, sub: Subscription, position: str
) -> AsyncIterator[bytes]:
    """The event stream. Each batch is on record before it is written to the connection; the
    first carries the position this connection resumed from."""
    resumed_from: str | None = position
    terms = feed.grant.terms()
    ahead: asyncio.Queue[Batch | BaseException | None] = asyncio.Queue(SSE_AHEAD)

    async def pump() -> None:
        try:
            async for batch in feed.batches():
                await ahead.put(batch)
            await ahead.put(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the stream, which reports it
            await ahead.put(exc)

    task = asyncio.create_task(pump(), name=f"sse-{sub.id}")
    try:
        yield b": subscribed\n\n"
        while True:
            try:
                async with asyncio.timeout(HEARTBEAT_S):
                    item = await ahead.get()
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if item is None:
                return
            if isinstance(item, FeedClosed):
                await gateway.closed(feed.grant, sub, item.reason)
                yield _event("end", {"reason": item.reason}, None)
                return
            if isinstance(item, BaseException):
                logger.error("SSE %s: %s", sub.id, item)
                yield _event("end", {"reason": "error", "detail": str(item)}, None)
                return
            recorded = gateway.sending(feed, sub, item, resumed_from=resumed_from)
            try:
                while not (await asyncio.wait({recorded}, timeout=HEARTBEAT_S))[0]:
                    yield b": keepalive\n\n"  # the store is slow or away: no batch unrecorded
                recorded.result()
            except Exception:  # reported in the stream, which ends
                logger.exception("SSE %s: the batch could not be put on record", sub.id)
                yield _event("end", {"reason": "error", "detail": "audit unavailable"}, None)
                return
            finally:
                recorded.cancel()  # the consumer went away first: left out if not yet written
            resumed_from = None
            yield _event(
                "readings",
                {"phase": item.phase, "terms": terms, "readings": item.readings},
                item.cursor,
            )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _event(kind: str, data: object, event_id: str | None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: ".encode() + _ENCODER.encode(data) + b"\n\n"


def _out(sub: Subscription, *, secret: bool = False) -> SubscriptionOut:
    return SubscriptionOut(
        id=sub.id, consumer=sub.consumer, grant_id=sub.grant_id,
        device_types=list(sub.device_types), metrics=list(sub.metrics),
        districts=None if sub.districts is None else list(sub.districts),
        delivery=sub.delivery, webhook_url=sub.webhook_url,
        secret=sub.secret if secret else None, topic=sub.topic, cursor=sub.cursor,
        status=sub.status, note=sub.note, created_at=sub.created_at,
    )  # fmt: skip
