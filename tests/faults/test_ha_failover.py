"""The primary of a Patroni cluster lost, handed over or cut off from its standbys while
ingest stores: nothing lost, nothing acknowledged that a standby does not have.

One cluster for the module: three etcd members, three PostgreSQL members under Patroni in
`synchronous_mode_strict`, each member's WAL stream to the others through a relay the tests
can cut. The ingestor is given the multi-host URL of all three and finds the primary on its
own; it acknowledges a message to the broker only after the commit, which the synchronous
standby has confirmed, so the standby that takes over has it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from silobreak.local import LocalMosquitto
from silobreak.local_ha import LocalEtcd, LocalPatroni, missing
from store.migrate import migrate
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
TEMPLATE = "silobreak_ha_template"
# 6,000 messages at 500/s: the publisher is still sending while the primary is gone.
PER_DEVICE = 150
RATE = 500.0
# A failover waits out the leader key's TTL (silobreak.local_ha.TTL_S) and the new
# primary's synchronous standby: generous on a shared machine.
RECOVERY_S = 180.0


@pytest.fixture(scope="module")
def links() -> dict[str, ThreadedProxy]:
    """Per member, the relay the other members reach its PostgreSQL through (its WAL stream
    to the standbys when it is the primary): a link a test can cut. Filled by `cluster`."""
    return {}


@pytest.fixture(scope="module")
def cluster(services_root: Path, links: dict[str, ThreadedProxy]) -> Iterator[LocalPatroni]:
    why = missing()
    assert why is None, why
    base = services_root / f"ha{uuid.uuid4().hex[:8]}"
    base.mkdir()
    base.chmod(0o755)
    etcd = LocalEtcd(base / "etcd")
    patroni = LocalPatroni(base / "patroni", etcd)
    with contextlib.ExitStack() as relays:
        for member in patroni.members:
            links[member.name] = relays.enter_context(ThreadedProxy(member.pg_port))
            patroni.connect_ports[member.name] = links[member.name].port
        yield from _running(patroni, etcd)


def _running(patroni: LocalPatroni, etcd: LocalEtcd) -> Iterator[LocalPatroni]:
    try:
        etcd.start()
        patroni.start()
        with psycopg.connect(patroni.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        migrate(patroni.url_for(TEMPLATE))
        with psycopg.connect(patroni.url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [TEMPLATE],
            )
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                    sql.Identifier(TEMPLATE)
                )
            )
        yield patroni
    finally:
        patroni.stop()
        etcd.stop()


@pytest.fixture
def ha_db(cluster: LocalPatroni, links: dict[str, ThreadedProxy]) -> str:
    """A migrated database of this test's own on the cluster: its multi-host URL.

    Every member is running and the primary has its synchronous standby before the test
    starts (a member an earlier test crashed has rejoined, every link is up)."""
    for link in links.values():
        link.unblock()
    cluster.start_stopped()
    cluster.wait_running()
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(dbname), sql.Identifier(TEMPLATE)
            )
        )
    return cluster.url_for(dbname)


def _dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@pytest.mark.parametrize("strike", ["primary killed", "switchover"])
def test_the_primary_lost_under_load_loses_and_doubles_nothing(
    cluster: LocalPatroni,
    ha_db: str,
    broker: LocalMosquitto,
    device_prefix: str,
    start_ingestor: StartIngestor,
    strike: str,
) -> None:
    """`primary killed`: SIGKILL of its Patroni, postmaster and backends, a host gone; a
    replica takes over once the leader key expires. `switchover`: Patroni hands over to the
    synchronous standby on request (REST /switchover), the old primary rejoins as a replica.
    """
    records = fleet(device_prefix, per_type=10)
    register(ha_db, records)
    items = messages(records, per_device=PER_DEVICE)
    proc = start_ingestor(broker.url, ha_db)
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=RATE
    )
    wait_until(lambda: message_count(ha_db, device_prefix) >= 500, 60, "a first 500 stored")
    old = cluster.wait_primary()
    candidate = cluster.sync_standby()
    assert sender.is_alive()  # the primary goes while messages are still being sent
    if strike == "switchover":
        cluster.switchover(old, candidate)  # returns once the candidate has taken over
    else:
        cluster.crash(old)
    proc.wait_for_log("unavailable", timeout=RECOVERY_S)
    new = cluster.wait_primary(not_this=old)
    sender.join(RECOVERY_S)
    wait_for_messages(ha_db, device_prefix, len(items), timeout=RECOVERY_S)
    # Read on the new primary itself, not wherever the URL leads.
    dbname = str(psycopg.conninfo.conninfo_to_dict(ha_db)["dbname"])
    assert_stored_exactly_once(cluster.member_url(new, dbname), device_prefix, items)
    # Ingest found the new primary by itself: the same process, still running.
    proc.wait_for_log("store is back", timeout=RECOVERY_S)
    assert proc.proc.poll() is None
    if strike == "switchover":
        assert new is candidate


def test_commits_wait_for_the_standby_and_nothing_is_acknowledged_without_it(
    cluster: LocalPatroni,
    links: dict[str, ThreadedProxy],
    ha_db: str,
    broker: LocalMosquitto,
    device_prefix: str,
    start_ingestor: StartIngestor,
) -> None:
    """The primary's link to its standbys cut mid-stream: in synchronous_mode_strict every
    commit waits for a standby, so ingest's batches fail at its store deadline and it
    acknowledges nothing until the link is back; then everything is stored once, on the
    primary and on its synchronous standby.

    (A batch given up on may still become visible on the primary alone: ending its session
    cancels the wait for the standby after the local commit. It was not acknowledged, so it
    is written again, and the retry's own commit waits for the standby like any other.)"""
    records = fleet(device_prefix, per_type=10)
    register(ha_db, records)
    items = messages(records, per_device=PER_DEVICE)
    proc = start_ingestor(broker.url, ha_db, store_timeout="4s")
    sender = Publishing(
        broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=RATE
    )
    wait_until(lambda: message_count(ha_db, device_prefix) >= 500, 60, "a first 500 stored")
    primary = cluster.wait_primary()
    standby = cluster.sync_standby()
    links[primary.name].block()  # every standby's WAL stream from the primary, and its retries
    first = proc.wait_for_log("did not answer", timeout=RECOVERY_S)
    acknowledged = proc.metric("silobreak_ingest_received_total")
    # Commits keep waiting while the publisher sends the rest (seconds: several deadlines).
    sender.join(RECOVERY_S)
    assert proc.metric("silobreak_ingest_received_total") == acknowledged
    assert proc.health()[0] == 503
    links[primary.name].unblock()
    proc.wait_for_log("store is back", timeout=RECOVERY_S, start=first)
    wait_for_messages(ha_db, device_prefix, len(items), timeout=RECOVERY_S)
    assert proc.metric("silobreak_ingest_received_total") == len(items)
    dbname = str(psycopg.conninfo.conninfo_to_dict(ha_db)["dbname"])
    assert_stored_exactly_once(cluster.member_url(primary, dbname), device_prefix, items)
    on_standby = cluster.member_url(standby, dbname)
    wait_for_messages(on_standby, device_prefix, len(items), timeout=RECOVERY_S)
    assert_stored_exactly_once(on_standby, device_prefix, items)
