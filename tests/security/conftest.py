"""What the attacks share: a town behind the streams API, a webhook receiver, a Grafana role."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from silobreak.local import LocalMosquitto
from store.sql_roles import ensure_roles, role_for
from tests.streams.conftest import Town, running_town
from tests.support.http import serving

# The town's webhook allow-list: one entry with a trailing `/`, one without.
HOOK_ALLOW = ("/hooks/environment/", "/hooks/mobility")


class Receiver(ThreadingHTTPServer):
    """Answers 204 to every POST, on any path, and keeps (path, headers, body) of each."""

    def __init__(self, port: int) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _, _ in self.posts]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.posts.append((self.path, dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def town(db_url: str, device_prefix: str, mqtt_broker: LocalMosquitto) -> Iterator[Town]:
    with running_town(db_url, device_prefix, mqtt_broker, hook_allow=HOOK_ALLOW) as t:
        yield t


@pytest.fixture
def receiver(town: Town) -> Iterator[Receiver]:
    with serving(Receiver(town.hook_port)) as server:
        yield server


def grafana_url(db_url: str, principal: str) -> str:
    """The URL a Grafana datasource of `principal` logs in with (its governed SQL role)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        ensure_roles(conn)
    return db_url.replace("postgresql://postgres@", f"postgresql://{role_for(principal)}@", 1)
