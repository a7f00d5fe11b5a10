"""The HTTP API over real uvicorn and PostgreSQL: bearer tokens and what each caller may see."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import uvicorn

from devices.registry import new_record
from silobreak.local import free_port
from silobreak.settings import Settings
from store.lifecycle import register_devices
from store.principals import add_principal, issue_token, revoke_token
from streams.api import create_app

pytestmark = pytest.mark.integration

ACTOR = "test"
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Api:
    base: str

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    port = free_port()
    config = uvicorn.Config(
        create_app(Settings(database_url=db_url)), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn exited"
        time.sleep(0.02)
    try:
        yield Api(f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def city(db_url: str, device_prefix: str) -> dict[str, str]:
    """Two services with devices, the coordinator, a team; a token each (and spoilt ones)."""
    p = device_prefix
    with psycopg.connect(db_url, autocommit=True) as conn:
        register_devices(
            conn,
            [
                new_record(f"{p}lamp-1", "streetlight", district="north"),
                new_record(f"{p}lamp-2", "streetlight", district="south"),
                new_record(f"{p}air-1", "air_sensor", district="north"),
            ],
            actor=ACTOR,
        )
        for name, kind in (("lighting", "service"), ("environment", "service"),
                           ("data-office", "coordinator"), ("pollution", "team")):  # fmt: skip
            add_principal(conn, name, kind, actor=ACTOR)
        tokens = {
            name: issue_token(conn, name, ttl=DAY, actor=ACTOR).token
            for name in ("lighting", "environment", "data-office", "pollution")
        }
        long_ago = datetime.now(UTC) - 2 * DAY
        tokens["expired"] = issue_token(conn, "lighting", ttl=DAY, actor=ACTOR, now=long_ago).token
        revoked = issue_token(conn, "lighting", ttl=DAY, actor=ACTOR)
        revoke_token(conn, revoked.token_id, actor=ACTOR)
        tokens["revoked"] = revoked.token
    return tokens


def ids(body: dict[str, Any]) -> list[str]:
    return [d["device_id"] for d in body["devices"]]


def test_a_service_lists_only_its_own_devices_and_the_coordinator_all(
    api: Api, city: dict[str, str], device_prefix: str
) -> None:
    p = device_prefix
    status, body = api.get("/v1/devices", city["lighting"])
    assert status == 200
    assert ids(body) == [f"{p}lamp-1", f"{p}lamp-2"]
    assert {d["service"] for d in body["devices"]} == {"lighting"}
    assert body["devices"][0]["credential"] == "active"

    status, body = api.get("/v1/devices?district=north", city["lighting"])
    assert (status, ids(body)) == (200, [f"{p}lamp-1"])
    status, body = api.get("/v1/devices", city["data-office"])
    assert (status, ids(body)) == (200, [f"{p}air-1", f"{p}lamp-1", f"{p}lamp-2"])
    status, body = api.get("/v1/devices?service=environment&type=air_sensor", city["data-office"])
    assert (status, ids(body)) == (200, [f"{p}air-1"])
    status, body = api.get("/v1/devices", city["pollution"])
    assert (status, ids(body)) == (200, [])

    status, body = api.get("/v1/devices?service=environment", city["lighting"])
    assert (status, body["reason"]) == (403, "not_owner")
    status, body = api.get(f"/v1/devices/{p}air-1", city["lighting"])
    assert (status, body["reason"]) == (403, "not_owner")
    status, body = api.get(f"/v1/devices/{p}air-1", city["environment"])
    assert (status, body["device_id"], body["lifecycle"]) == (200, f"{p}air-1", "active")


def test_missing_unknown_expired_and_revoked_tokens_are_refused_with_401_and_a_reason(
    api: Api, city: dict[str, str]
) -> None:
    cases = {
        "missing_token": None,
        "malformed_token": "not-a-token",
        "unknown_token": "sbk_" + "A" * 43,
        "expired_token": city["expired"],
        "revoked_token": city["revoked"],
    }
    for reason, token in cases.items():
        status, body = api.get("/v1/devices", token)
        assert (status, body["reason"]) == (401, reason), body


def test_a_malformed_filter_is_a_422_with_a_reason(api: Api, city: dict[str, str]) -> None:
    status, body = api.get("/v1/devices?lifecycle=sleeping", city["data-office"])
    assert (status, body["reason"]) == (422, "malformed_request")
    assert "lifecycle" in body["detail"]


def test_healthz_answers_while_the_store_is_up(api: Api) -> None:
    assert api.get("/healthz") == (200, {"status": "ok"})
