"""Fixtures for whole-pipeline tests: a broker of the test's own and ingestor processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from silobreak.local import LocalMosquitto
from tests.e2e.harness import IngestProcess, ingest_env


@pytest.fixture
def broker(service_dir: Path) -> Iterator[LocalMosquitto]:
    """A Mosquitto of this test's own: no other test's sessions or messages in it."""
    server = LocalMosquitto(service_dir / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_ingestor(tmp_path: Path, device_prefix: str) -> Iterator[Callable[..., IngestProcess]]:
    """Start `silobreak ingest` processes; each is stopped after the test."""
    started: list[IngestProcess] = []

    def start(mqtt_url: str, db_url: str, client: str = "1", **extra: str) -> IngestProcess:
        env = ingest_env(mqtt_url, db_url, f"{device_prefix}ingest-{client}", **extra)
        proc = IngestProcess(env, tmp_path)
        started.append(proc)
        proc.wait_for_log("subscribed")
        return proc

    yield start
    for proc in started:
        proc.stop()
