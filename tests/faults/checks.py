"""What every fault test ends with: each message published is stored exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from devices.catalog import PHASE_CODES
from tests.e2e.harness import message_count, query

Item = tuple[str, bytes, str, dict[str, Any], datetime]


def assert_stored_exactly_once(
    db_url: str, prefix: str, items: Sequence[Item], *, rejected: int = 0
) -> None:
    """One row per message, each metric with the value sent; `rejected` dead letters."""
    assert message_count(db_url, prefix) == len(items)
    expected: set[tuple[object, ...]] = set()
    for _, _, device, metrics, ts in items:
        for name, raw in metrics.items():
            value = PHASE_CODES[raw] if isinstance(raw, str) else raw
            expected.add((device, name, ts, float(value)))
    stored = query(
        db_url,
        "SELECT device_id, metric, time, value FROM readings WHERE device_id LIKE %s",
        prefix + "%",
    )
    assert len(stored) == len(expected)
    assert set(stored) == expected
    dead = query(
        db_url, "SELECT count(*) FROM rejected_messages WHERE device_id LIKE %s", prefix + "%"
    )
    assert dead[0][0] == rejected


def via_port(url: str, port: int) -> str:
    """The same URL (MQTT or libpq) with its host and port replaced by 127.0.0.1:`port`."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
