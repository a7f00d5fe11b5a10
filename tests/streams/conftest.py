"""A small city behind a running streams API (real uvicorn, PostgreSQL and Mosquitto)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from devices.registry import new_record
from silobreak.local import LocalMosquitto, free_port
from silobreak.settings import Settings, streams_config
from store.lifecycle import register_devices
from store.principals import add_principal, issue_token
from store.writer import ReadingsWriter
from streams.api import create_app
from streams.routes import include_all

ACTOR = "test"
SERVICES = ("lighting", "mobility", "energy", "environment")


@dataclass
class Town:
    db_url: str
    base: str
    prefix: str
    tokens: dict[str, str]
    hook_port: int
    devices: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # id -> type, svc, d
    app: Any = None  # the FastAPI app serving it (its gateway: app.state.streams)

    def http(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30
        )

    def grant(self, owner: str, **spec: Any) -> dict[str, Any]:
        expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        body = {"owner": owner, "purpose": "pollution study", "granularity": "raw",
                "expires_at": expires, **spec}  # fmt: skip
        with self.http(owner) as h:
            r = h.post("/v1/grants", json=body)
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    def write(self, device_type: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Store rows (time, device_id, metrics...) through the real write path."""
        write_rows(self.db_url, device_type, [(t, d, self.devices[d][1], *m) for t, d, *m in rows])


def write_rows(db_url: str, device_type: str, rows: Sequence[tuple[Any, ...]]) -> None:
    async def go() -> None:
        writer = ReadingsWriter(db_url, name="test")
        try:
            await writer.write({device_type: list(rows)})
        finally:
            await writer.close()

    asyncio.run(go())


@pytest.fixture
def town(db_url: str, device_prefix: str, mqtt_broker: LocalMosquitto) -> Iterator[Town]:
    with running_town(db_url, device_prefix, mqtt_broker) as t:
        yield t


@contextmanager
def running_town(
    db_url: str,
    p: str,
    mqtt_broker: LocalMosquitto,
    *,
    hook_allow: Sequence[str] = ("/hooks/",),
    **settings: Any,
) -> Iterator[Town]:
    """The town's fleet and principals, and the streams API serving them (real uvicorn);
    `hook_allow`: webhook allow-list paths on the town's hook port."""
    fleet = [
        new_record(f"{p}lamp-n1", "streetlight", district="north", lat=50.1, lon=4.1),
        new_record(f"{p}lamp-n2", "streetlight", district="north", lat=50.2, lon=4.2),
        new_record(f"{p}lamp-s1", "streetlight", district="south", lat=49.1, lon=4.1),
        new_record(f"{p}tl-n1", "traffic_light", district="north"),
        new_record(f"{p}tl-s1", "traffic_light", district="south"),
        new_record(f"{p}air-n1", "air_sensor", district="north"),
        *(new_record(f"{p}m-n{i}", "meter", district="north") for i in range(6)),
        *(new_record(f"{p}m-s{i}", "meter", district="south") for i in range(2)),
    ]
    tokens: dict[str, str] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        register_devices(conn, fleet, actor=ACTOR)
        for name in SERVICES:
            add_principal(conn, name, "service", actor=ACTOR)
        add_principal(conn, "planning", "team", actor=ACTOR)
        add_principal(conn, "data-office", "coordinator", actor=ACTOR)
        for name in (*SERVICES, "planning", "data-office"):
            tokens[name] = issue_token(conn, name, ttl=timedelta(days=1), actor=ACTOR).token
    hook_port = free_port()
    allow = [f"http://127.0.0.1:{hook_port}{path}" for path in hook_allow]
    with serving(db_url, mqtt_broker, streams_webhook_allow=allow, **settings) as (base, app):
        town = Town(db_url, base, p, tokens, hook_port)
        town.devices = {r.device_id: (r.device_type, r.service, r.district or "") for r in fleet}
        town.app = app
        yield town


@contextmanager
def serving(db_url: str, mqtt_broker: LocalMosquitto, **settings: Any) -> Iterator[tuple[str, Any]]:
    """The streams API over `db_url` (real uvicorn, on a free port): its base URL and app."""
    config: dict[str, Any] = {
        "database_url": db_url,
        "mqtt_url": mqtt_broker.url,
        "streams_poll_interval": timedelta(milliseconds=100),
        "streams_aggregate_grace": timedelta(milliseconds=500),
        "streams_webhook_backoff": timedelta(milliseconds=50),
        "streams_webhook_backoff_max": timedelta(milliseconds=200),
        **settings,
    }
    settings_ = Settings(**config)
    app = create_app(settings_)
    include_all(app, streams_config(settings_))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


def wait_until(check: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
