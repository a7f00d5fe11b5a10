"""Ingest against a store that restarts, drops off the network or stops answering: nothing lost."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from silobreak.local import LocalMosquitto, LocalPostgres
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
from tests.faults.checks import assert_stored_exactly_once, via_port
from tests.support.proxy import ThreadedProxy

pytestmark = [pytest.mark.integration, pytest.mark.fault]

StartIngestor = Callable[..., IngestProcess]
# The ingestor's store deadline (store.deadline.DEFAULT_TIMEOUT): a call on a silent link
# fails after it, plus a little for the retry's backoff and a new connect.
STORE_DEADLINE_S = 15.0


def test_ingest_survives_a_postgres_restart_mid_stream(
    broker: LocalMosquitto, own_pg: LocalPostgres, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(own_pg.url, records)
    items = messages(records, per_device=150)  # 6,000 messages, 3 s at 2,000/s
    proc = start_ingestor(broker.url, own_pg.url)
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    wait_until(lambda: message_count(own_pg.url, device_prefix) >= 1000, 30, "a first thousand")
    own_pg.restart()
    sender.join()
    wait_for_messages(own_pg.url, device_prefix, len(items))
    assert_stored_exactly_once(own_pg.url, device_prefix, items)
    assert proc.proc.poll() is None


def test_ingest_survives_a_network_cut_to_the_database(
    broker: LocalMosquitto, db_url: str, device_prefix: str, start_ingestor: StartIngestor
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=150)
    with ThreadedProxy(_port(db_url)) as link:
        proc = start_ingestor(broker.url, via_port(db_url, link.port))
        sender = Publishing(
            broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
        )
        wait_until(lambda: message_count(db_url, device_prefix) >= 1000, 30, "a first thousand")
        link.block()  # every connection reset, every new one refused
        cut_log = proc.wait_for_log("unavailable", timeout=30)
        held = message_count(db_url, device_prefix)
        sender.join()
        assert message_count(db_url, device_prefix) == held  # nothing got through the cut
        link.unblock()
        proc.wait_for_log("store is back", timeout=60, start=cut_log)
        wait_for_messages(db_url, device_prefix, len(items))
    assert_stored_exactly_once(db_url, device_prefix, items)


def test_ingest_does_not_hang_on_a_database_that_stops_answering(
    broker: LocalMosquitto,
    db_url: str,
    device_prefix: str,
    start_ingestor: StartIngestor,
    outage_s: float,
) -> None:
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=150)
    with ThreadedProxy(_port(db_url)) as link:
        proc = start_ingestor(broker.url, via_port(db_url, link.port))
        sender = Publishing(
            broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
        )
        wait_until(lambda: message_count(db_url, device_prefix) >= 1000, 30, "a first thousand")
        # Packets vanish: open connections freeze, new ones are accepted and never answered.
        link.blackhole()
        silent_since = time.monotonic()
        held = message_count(db_url, device_prefix)
        gave_up = proc.wait_for_log("did not answer", timeout=STORE_DEADLINE_S + 15)
        sender.join()
        # The fault itself lasts `outage_s` (15 s in CI, 60 s in the reliability run).
        time.sleep(max(0.0, outage_s - (time.monotonic() - silent_since)))
        assert message_count(db_url, device_prefix) == held
        link.unblock()
        proc.wait_for_log("store is back", timeout=STORE_DEADLINE_S + 30, start=gave_up)
        wait_for_messages(db_url, device_prefix, len(items))
    assert_stored_exactly_once(db_url, device_prefix, items)
    assert proc.proc.poll() is None


def _port(db_url: str) -> int:
    from urllib.parse import urlsplit  # noqa: PLC0415

    port = urlsplit(db_url).port
    assert port is not None
    return port
