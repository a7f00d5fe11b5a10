"""Messages that once stopped or stalled ingest: each is dead-lettered, and the loop goes on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from silobreak.local import LocalMosquitto
from tests.e2e.harness import (
    IngestProcess,
    fleet,
    messages,
    publish,
    query,
    register,
    wait_for_messages,
    wait_until,
)
from tests.faults.checks import assert_stored_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

StartIngestor = Callable[..., IngestProcess]


def test_poison_messages_are_dead_lettered_and_ingest_goes_on(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=1)
    register(db_url, records)
    air, meter, light = (
        f"{device_prefix}{t}-000" for t in ("air_sensor", "meter", "traffic_light")
    )
    poison = {
        # msgspec raised UnicodeDecodeError: the receive path stopped, on every redelivery.
        (air, b'{"metrics": {"pm\xe9": 1}}'): "malformed_payload",
        # float() of the integer raised OverflowError: the same crash loop.
        (meter, b'{"metrics": {"index": 1' + b"0" * 400 + b"}}"): "schema_violation",
        (meter, b'{"ts": 1' + b"0" * 400 + b', "metrics": {"index": 1}}'): "schema_violation",
        # Stored as infinity, which the contract refuses.
        (meter, b'{"metrics": {"index": Infinity}}'): "schema_violation",
        # Accepted, then refused by the int8 column on every retry: ingest stalled, silent.
        (light, b'{"metrics": {"vehicle_count": 9223372036854775808}}'): "schema_violation",
        (air, b"[" * 100_000): "payload_too_large",
        (air, b"[" * 30_000 + b"]" * 30_000): "malformed_payload",
        (air, b'{"ts": "9999-12-31T23:59:59Z", "metrics": {"pm25": 1}}'): (
            "timestamp_out_of_range"
        ),
    }
    good = messages(records, per_device=20)
    stream = [(t, p) for t, p, *_ in good[:40]]
    stream += [(f"devices/{device}/telemetry", body) for device, body in poison]
    stream += [(t, p) for t, p, *_ in good[40:]]
    proc = start_ingestor(broker.url, db_url)
    publish(broker.url, stream, f"{device_prefix}pub")
    wait_for_messages(db_url, device_prefix, len(good))
    wait_until(
        lambda: proc.metric("silobreak_ingest_received_total") == len(stream), 30, "every message"
    )
    rejected = query(
        db_url,
        "SELECT reason, count(*) FROM rejected_messages WHERE device_id LIKE %s GROUP BY 1",
        device_prefix + "%",
    )
    assert dict(rejected) == dict(Counter(poison.values()))
    assert proc.proc.poll() is None
    assert_stored_exactly_once(db_url, device_prefix, good, rejected=len(poison))
