"""Every reader, one scope, the same rows: history (JSON pages), subscription replay and live
delivery (the hub's in-memory twin of the scope), live aggregates and the operator's reader."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from store.read import Selection
from store.reader import StoreReader
from streams.client import StreamsClient
from tests.streams.conftest import Town

pytestmark = pytest.mark.integration

END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
START = END - timedelta(hours=2)


def seed(town: Town) -> None:
    p = town.prefix
    lamps = [f"{p}lamp-n1", f"{p}lamp-n2", f"{p}lamp-s1"]
    town.write(
        "streetlight",
        [
            (START + timedelta(seconds=97 * k), d, k % 2, (k * 3 % 40) / 4, (k * 13 % 400) / 4)
            for k in range(70)
            for d in lamps
        ],
    )


def history(town: Town, grant_id: int, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    with town.http("planning") as h:
        while True:
            query = {"grant_id": grant_id, "start": START.isoformat(), "end": END.isoformat(),
                     "limit": 7, **params, **({"after": after} if after else {})}  # fmt: skip
            body = h.get("/v1/history", params=query).json()
            out += body["readings"]
            after = body["next_after"]
            if after is None:
                return out


def key(r: dict[str, Any]) -> tuple[Any, ...]:
    at = datetime.fromisoformat(r["time"])  # JSON says +00:00, SSE says Z: the same instant
    return (at, r["device_id"], r["metric"], r["value"], r["district"])


def bucket_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (datetime.fromisoformat(r["bucket"]), r["device_id"], r["metric"], r["avg"],
            r["min"], r["max"], r["count"])  # fmt: skip


def test_history_replay_live_and_the_store_reader_agree_on_a_raw_scope(town: Town) -> None:
    seed(town)
    p = town.prefix
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"], districts=["north"])  # fmt: skip
    from_history = history(town, g["id"])
    assert len(from_history) == 2 * 70
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        page = StoreReader(conn).raw_range(
            Selection("streetlight", ("power_w",), service="lighting", district="north"),
            START, END, limit=100_000,
        )  # fmt: skip
    from_reader = [
        {"time": r.time.isoformat(), "device_id": r.device_id, "metric": r.metric,
         "value": r.value, "district": r.district}
        for r in page.readings
    ]  # fmt: skip
    assert [key(r) for r in from_reader] == [key(r) for r in from_history]

    live_at = datetime.now(UTC)
    fresh = [(live_at, f"{p}lamp-n1", 1, 10.0, 11.5), (live_at, f"{p}lamp-s1", 1, 10.0, 12.5),
             (live_at + timedelta(seconds=1), f"{p}lamp-n2", 1, 10.0, 13.5)]  # fmt: skip

    async def subscribe() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            sub = await client.create_subscription(
                grant_id=g["id"], delivery="sse", since=START.isoformat()
            )
            async with asyncio.timeout(60):
                async for event in client.events(sub["id"]):
                    got += event.readings
                    if len(got) == len(from_history):  # replay done: now live rows
                        await asyncio.to_thread(town.write, "streetlight", fresh)
                    if len(got) >= len(from_history) + 2:
                        return got
        return got

    got = asyncio.run(subscribe())
    replayed, live = got[: len(from_history)], got[len(from_history) :]
    assert [key(r) for r in replayed] == [key(r) for r in from_history]
    # The hub selects live rows in memory: the same rule as the SQL (north only, power_w).
    assert sorted((r["device_id"], r["value"]) for r in live) == [
        (f"{p}lamp-n1", 11.5), (f"{p}lamp-n2", 13.5)]  # fmt: skip


def test_history_live_aggregates_and_the_store_reader_agree_on_an_aggregate_scope(
    town: Town,
) -> None:
    seed(town)
    g = town.grant("lighting", consumer="planning", device_types=["streetlight"],
                   metrics=["power_w"], granularity="aggregate", interval="30m",
                   pool="device")  # fmt: skip
    from_history = history(town, g["id"])
    assert from_history
    with psycopg.connect(town.db_url, autocommit=True) as conn:
        buckets = StoreReader(conn).buckets(
            Selection("streetlight", ("power_w",), service="lighting"),
            START, END, timedelta(minutes=30),
        )  # fmt: skip
    assert [(b.bucket, b.device_id, "power_w", b.avg, b.min, b.max, b.count) for b in buckets] == [
        bucket_key(r) for r in from_history
    ]

    async def live_aggregates() -> list[dict[str, Any]]:
        async with StreamsClient(town.base, town.tokens["planning"]) as client:
            sub = await client.create_subscription(
                grant_id=g["id"], delivery="sse", since=START.isoformat()
            )
            async with asyncio.timeout(60):
                async for event in client.events(sub["id"]):
                    return [r for r in event.readings if datetime.fromisoformat(r["bucket"]) < END]
        return []

    live = asyncio.run(live_aggregates())
    assert [bucket_key(r) for r in live] == [bucket_key(r) for r in from_history]
