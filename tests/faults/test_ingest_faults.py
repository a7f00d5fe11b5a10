"""Ingestors killed, links to the broker cut, the broker restarted: nothing lost or doubled."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from silobreak.local import LocalMosquitto
from tests.e2e.harness import (
    IngestProcess,
    Publishing,
    fleet,
    message_count,
    messages,
    register,
    wait_for_messages,
    wait_until,
)
from tests.faults.checks import assert_stored_exactly_once
from tests.support.proxy import ThreadedProxy

pytestmark = [pytest.mark.integration, pytest.mark.fault]

StartIngestor = Callable[..., IngestProcess]


def test_ingestors_killed_at_random_moments_lose_and_double_nothing(
    broker: LocalMosquitto,
    db_url: str,
    device_prefix: str,
    start_ingestor: StartIngestor,
    fault_seed: int,
) -> None:
    rng = random.Random(fault_seed)
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=300)  # 12,000 messages, 6 s at 2,000/s
    ingestors = {name: start_ingestor(broker.url, db_url, client=name) for name in "ab"}
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    started = time.monotonic()
    # Three SIGKILLs at moments drawn from the seed, each of an ingestor drawn from it too;
    # each comes back under its own client id, to which the broker owes its unacked messages.
    for moment in sorted(rng.uniform(0.5, 5.5) for _ in range(3)):
        time.sleep(max(0.0, moment - (time.monotonic() - started)))
        name = rng.choice("ab")
        ingestors[name].kill()
        ingestors[name] = start_ingestor(broker.url, db_url, client=name)
    sender.join()
    wait_for_messages(db_url, device_prefix, len(items))
    assert_stored_exactly_once(db_url, device_prefix, items)
    assert all(proc.proc.poll() is None for proc in ingestors.values())


def test_links_to_the_broker_cut_at_random_moments_lose_nothing(
    broker: LocalMosquitto,
    db_url: str,
    device_prefix: str,
    start_ingestor: StartIngestor,
    fault_seed: int,
) -> None:
    rng = random.Random(fault_seed)
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=300)
    with ThreadedProxy(broker.port) as device_link, ThreadedProxy(broker.port) as ingest_link:
        proc = start_ingestor(ingest_link.url, db_url)
        sender = Publishing(
            device_link.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
        )
        started = time.monotonic()
        links = {"publisher": device_link, "ingestor": ingest_link}
        cuts = []
        for moment in sorted(rng.uniform(0.5, 5.5) for _ in range(4)):
            time.sleep(max(0.0, moment - (time.monotonic() - started)))
            name = rng.choice(sorted(links))
            links[name].cut()  # a reset on both ends, mid-stream
            cuts.append(name)
        sender.join()
        wait_for_messages(db_url, device_prefix, len(items))
    assert_stored_exactly_once(db_url, device_prefix, items)
    assert sender.reconnects == cuts.count("publisher")
    if "ingestor" in cuts:
        assert any("reconnected" in line for line in proc.lines)


def test_a_broker_restarted_mid_run_with_persistence_loses_nothing(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    assert broker.persistence
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=300)
    proc = start_ingestor(broker.url, db_url)
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    wait_until(lambda: message_count(db_url, device_prefix) >= 2000, 30, "two thousand stored")
    broker.restart()  # SIGTERM: Mosquitto saves sessions and queued messages, then comes back
    sender.join()
    assert sender.reconnects >= 1
    wait_for_messages(db_url, device_prefix, len(items))
    assert_stored_exactly_once(db_url, device_prefix, items)
    assert proc.wait_for_log("reconnected") >= 0
