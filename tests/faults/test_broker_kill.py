"""The broker SIGKILLed and started again on its persistence file: what is lost, and what is not.

Mosquitto 2.0 keeps its sessions and queues in memory and writes them to its persistence file
every `autosave_interval` seconds and when it stops cleanly; a SIGKILL skips the last write.
Measured here (docs/reliability.md, "A SIGKILL of the broker"):

- while ingest keeps up, the broker hands each message on within milliseconds, and ingest
  stores what it was handed whether or not the broker lives to get the acknowledgement: the
  loss is at most what the broker had acknowledged to publishers and not yet handed on (none
  in every run here);
- while ingest is down or behind, the broker loses everything it queued since its last save,
  acknowledged to publishers or not; what it saved comes back.

Nothing is ever stored twice: what the restored broker hands out again is written idempotently.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from devices.registry import DeviceRecord
from mqtt import MqttPublisher
from silobreak.broker_config import BrokerConfig, render
from silobreak.local import LocalMosquitto
from store.schema import READINGS_TABLES
from tests.e2e.harness import (
    IngestProcess,
    Publishing,
    fleet,
    messages,
    register,
    wait_for_messages,
    wait_until,
)
from tests.faults.checks import Item, assert_stored_exactly_once

pytestmark = [pytest.mark.integration, pytest.mark.fault]

StartIngestor = Callable[..., IngestProcess]
Key = tuple[str, datetime]
SAVED = "Saving in-memory database"
# Stored messages stop changing for this long: whatever the restored broker had to hand out
# again has been handed out.
SETTLED_S = 1.5
PUBLISHER_SETTLE_S = 0.5


class DeployedMosquitto(LocalMosquitto):
    """The configuration `silobreak broker-config` writes (limits, persistence, autosave), with
    anonymous access on its plain listener instead of the registry's accounts: what a SIGKILL
    loses depends on the former only."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.cfg = BrokerConfig(
            profile="dev", directory=self.base_dir, plain_port=self.port, run_as="root"
        )

    def config_text(self) -> str:
        lines = []
        for line in render(self.cfg).splitlines():
            option = line.split(" ", 1)[0]
            if option in {"password_file", "acl_file"}:
                continue
            lines.append("allow_anonymous true" if option == "allow_anonymous" else line)
        return "\n".join(lines) + "\n"

    @property
    def autosave_interval(self) -> int:
        line = next(x for x in self.config_text().splitlines() if x.startswith("autosave_interval"))
        return int(line.split()[1])


@pytest.fixture(params=["local", "deployed"])
def killable_broker(request: pytest.FixtureRequest, service_dir: Path) -> Iterator[LocalMosquitto]:
    """LocalMosquitto's configuration (tests, demo) and the one `silobreak broker-config` writes."""
    server = (
        LocalMosquitto(service_dir / "mosquitto")
        if request.param == "local"
        else DeployedMosquitto(service_dir / "mosquitto")
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def deployed_broker(service_dir: Path) -> Iterator[DeployedMosquitto]:
    server = DeployedMosquitto(service_dir / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_broker_killed_mid_stream_loses_at_most_what_it_had_not_handed_on(
    killable_broker: LocalMosquitto,
    db_url: str,
    device_prefix: str,
    start_ingestor: StartIngestor,
    fault_seed: int,
) -> None:
    broker = killable_broker
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    items = messages(records, per_device=300)  # 12,000 messages, 6 s at 2,000/s
    keys = [_key(item) for item in items]
    proc = start_ingestor(broker.url, db_url)
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=2000
    )
    started = time.monotonic()
    timeline: list[str] = []

    def note(event: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.2f}s  {event}")

    rng = random.Random(fault_seed)
    save_at, moment = rng.uniform(0.5, 1.5), rng.uniform(2.0, 4.5)
    try:
        # A broker that has run a while has saved before: force one save (what autosave does),
        # so the restart restores the ingest session with the messages it held then, and
        # hands those out again.
        time.sleep(max(0.0, save_at - (time.monotonic() - started)))
        mark = _log_size(broker)
        os.kill(_pid(broker), signal.SIGUSR1)
        wait_until(lambda: SAVED in _log_since(broker, mark), 10, "the broker's save")
        note("the broker saved its store (SIGUSR1)")
        time.sleep(max(0.0, moment - (time.monotonic() - started)))
        stored_before = set(_stored(db_url, device_prefix))  # all stored at the kill, or fewer
        broker.kill()
        # No PUBACK can come while the broker is down; the publisher's count settles at once
        # (a window acknowledged just before the kill is counted as its flush returns).
        time.sleep(PUBLISHER_SETTLE_S)
        acked = sender.acked  # items[:acked] acknowledged to the publisher; it resends the rest
        # What the broker may have held: acknowledged, and not known to be stored at the kill.
        held = {i for i in range(acked) if keys[i] not in stored_before}
        note(
            f"SIGKILL: {acked} acknowledged to the publisher, {len(stored_before)} stored, "
            f"{len(held)} acknowledged and not yet stored"
        )
        broker.start()  # the same port and persistence file
        note("broker started again")
        sender.join()
        note(
            f"publisher done: {sender.reconnects} reconnect(s), "
            f"{sender.resent_unrouted} window(s) sent again after a 0x10"
        )
        stored = _settle(db_url, device_prefix, keys[acked:])
        present = set(stored)
        lost = {i for i, key in enumerate(keys) if key not in present}
        again = proc.metric("silobreak_ingest_duplicates_total")
        note(f"{len(stored)} stored, {len(lost)} lost; {again:.0f} handed out again (duplicates)")
    finally:
        print("\n".join(["timeline:", *timeline]))
    assert len(stored) == len(present)  # nothing stored twice
    assert lost <= held  # lost only what the broker had acknowledged and not handed on
    assert all(i < acked for i in lost)  # everything published after the restart is stored
    assert_stored_exactly_once(
        db_url, device_prefix, [x for i, x in enumerate(items) if i not in lost]
    )
    assert proc.proc.poll() is None  # ingest reconnected by itself, no restart
    assert proc.wait_for_log("reconnected", timeout=5) >= 0


def test_a_broker_killed_while_ingest_is_down_loses_what_it_queued_since_its_last_save(
    deployed_broker: DeployedMosquitto,
    db_url: str,
    device_prefix: str,
    start_ingestor: StartIngestor,
) -> None:
    broker = deployed_broker
    records = fleet(device_prefix, per_type=10)
    register(db_url, records)
    # Four batches of 2,000 messages, each 50 s of readings of its own.
    delivered, saved, unsaved, after = _batches(records, 4, per_device=50)
    timeline: list[str] = []
    started = time.monotonic()

    def note(event: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.2f}s  {event}")

    try:
        proc = start_ingestor(broker.url, db_url)
        _publish_all(broker.url, delivered, f"{device_prefix}pub")
        wait_for_messages(db_url, device_prefix, len(delivered))
        assert proc.stop() == 0  # its session and subscription stay on the broker
        note(f"batch 1 stored; ingest stopped (autosave every {broker.autosave_interval} s)")
        _publish_all(broker.url, saved, f"{device_prefix}pub")
        note("batch 2 acknowledged by the broker, queued for ingest")
        mark = _log_size(broker)
        wait_until(
            lambda: SAVED in _log_since(broker, mark),
            broker.autosave_interval + 10,
            "the broker's autosave",
        )
        note("the broker saved its store")
        mark = _log_size(broker)
        _publish_all(broker.url, unsaved, f"{device_prefix}pub")
        note("batch 3 acknowledged by the broker, queued for ingest")
        broker.kill()
        saved_again = SAVED in _log_since(broker, mark)
        note(f"SIGKILL (saved again since batch 2: {saved_again})")
        broker.start()
        proc = start_ingestor(broker.url, db_url)  # the same client id: the restored session
        note("broker and ingest started again")
        _publish_all(broker.url, after, f"{device_prefix}pub")
        note("batch 4 acknowledged by the broker")
        stored = _settle(db_url, device_prefix, [_key(x) for x in [*saved, *after]])
        present = set(stored)
        lost = [x for x in [*delivered, *saved, *unsaved, *after] if _key(x) not in present]
        note(f"{len(stored)} stored, {len(lost)} lost")
    finally:
        print("\n".join(["timeline:", *timeline]))
    assert len(stored) == len(present)
    # What the broker had saved came back; what it had acknowledged since and held, did not.
    unsaved_keys = {_key(x) for x in unsaved}
    assert {_key(x) for x in lost} <= unsaved_keys
    if not saved_again:
        assert len(lost) == len(unsaved)
    assert_stored_exactly_once(db_url, device_prefix, [*delivered, *saved, *after])
    assert proc.proc.poll() is None


def _key(item: Item) -> Key:
    return item[2], item[4]


def _batches(records: Sequence[DeviceRecord], count: int, *, per_device: int) -> list[list[Item]]:
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=count * per_device + 60)
    return [
        messages(records, per_device, end=first + timedelta(seconds=(n + 1) * per_device))
        for n in range(count)
    ]


def _publish_all(url: str, items: Sequence[Item], client_id: str) -> None:
    """Publish QoS 1 and wait for every PUBACK; each must have been routed to a subscriber
    (queued for the ingest session when ingest is down), not acknowledged with 0x10."""

    async def go() -> int:
        pub = MqttPublisher(url, client_id=client_id, window=1000)
        await pub.start()
        try:
            await pub.publish_many([(t, p) for t, p, *_ in items])
            await pub.flush()
            return pub.unrouted
        finally:
            await pub.stop()

    assert asyncio.run(go()) == 0


def _stored(db_url: str, prefix: str) -> list[Key]:
    """(device, time) of every stored message of this test, one per row."""
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT device_id, time FROM {} WHERE device_id LIKE %(p)s").format(
            sql.Identifier(table.name)
        )
        for table in READINGS_TABLES.values()
    )
    with psycopg.connect(db_url) as conn:
        return [(row[0], row[1]) for row in conn.execute(query, {"p": prefix + "%"})]


def _settle(db_url: str, prefix: str, needed: Sequence[Key], timeout: float = 60.0) -> list[Key]:
    """Wait until every key in `needed` is stored and nothing more arrives; the stored keys."""
    deadline = time.monotonic() + timeout
    last: list[Key] = []
    since = time.monotonic()
    while True:
        stored = _stored(db_url, prefix)
        if len(stored) != len(last):
            last, since = stored, time.monotonic()
        elif set(needed) <= set(stored) and time.monotonic() - since >= SETTLED_S:
            return stored
        if time.monotonic() > deadline:
            missing = len(set(needed) - set(stored))
            raise AssertionError(f"{missing} messages still not stored after {timeout}s")
        time.sleep(0.1)


def _pid(broker: LocalMosquitto) -> int:
    line = next(x for x in broker.config_text().splitlines() if x.startswith("pid_file "))
    return int(Path(line.split(" ", 1)[1]).read_text())


def _log_size(broker: LocalMosquitto) -> int:
    return broker.log_file.stat().st_size


def _log_since(broker: LocalMosquitto, offset: int) -> str:
    with broker.log_file.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")
