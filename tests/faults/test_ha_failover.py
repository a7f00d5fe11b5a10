"""The primary of a Patroni cluster lost, handed over or cut off from its standbys while
ingest stores: nothing lost, nothing acknowledged that a standby does not have; a live
subscriber and the InfluxDB mirror carry on through the loss, nothing missed or repeated.

One cluster for the module: three etcd members, three PostgreSQL members under Patroni in
`synchronous_mode_strict`, each member's WAL stream to the others through a relay the tests
can cut. The ingestor is given the multi-host URL of all three and finds the primary on its
own; it acknowledges a message to the broker only after the commit, which the synchronous
standby has confirmed, so the standby that takes over has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from silobreak.local import LocalMosquitto
from silobreak.local_ha import LocalEtcd, LocalPatroni, missing
from store.migrate import migrate
from store.mirror import InfluxMirror, MirrorConfig
from store.mirror import status as mirror_status
from store.principals import add_principal, issue_token
from streams.client import StreamsClient
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
from tests.store.test_mirror import store_points, victoria_points
from tests.streams.conftest import serving
from tests.support.proxy import ThreadedProxy
from tests.support.victoria import LocalVictoria

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


def test_a_live_subscriber_gets_every_reading_once_through_a_primary_loss(
    cluster: LocalPatroni,
    ha_db: str,
    broker: LocalMosquitto,
    device_prefix: str,
    start_ingestor: StartIngestor,
) -> None:
    """The streams API, given the cluster's multi-host URL like ingest, keeps an SSE
    subscriber's feed going while the primary is SIGKILLed under load: the subscriber, resuming
    after the last event it received as any client does, gets every granted reading once.
    Its cursor (a PostgreSQL snapshot) stays meaningful on the new primary: transaction ids
    are the cluster's, replicated with everything else."""
    records = [r for r in fleet(device_prefix, per_type=10) if r.device_type == "streetlight"]
    register(ha_db, records)
    items = messages(records, per_device=PER_DEVICE)
    tokens = {}
    with psycopg.connect(ha_db, autocommit=True) as conn:
        add_principal(conn, "lighting", "service", actor="test")
        add_principal(conn, "planning", "team", actor="test")
        for name in ("lighting", "planning"):
            tokens[name] = issue_token(conn, name, ttl=timedelta(hours=1), actor="test").token
    got: list[tuple[str, datetime]] = []
    ended: list[BaseException] = []
    ready = threading.Event()
    with serving(ha_db, broker) as (base, _app):
        with httpx.Client(base_url=base, timeout=30) as h:
            r = h.post(
                "/v1/grants",
                headers={"Authorization": f"Bearer {tokens['lighting']}"},
                json={"owner": "lighting", "consumer": "planning",
                      "device_types": ["streetlight"], "metrics": ["power_w"],
                      "granularity": "raw", "purpose": "failover study",
                      "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()},
            )  # fmt: skip
            assert r.status_code == 201, r.text
            grant_id = r.json()["id"]

        async def follow() -> None:
            async with StreamsClient(base, tokens["planning"]) as client:
                sub = await client.create_subscription(grant_id=grant_id, delivery="sse")
                ready.set()
                async with asyncio.timeout(4 * RECOVERY_S):
                    async for event in client.events(sub["id"]):
                        got.extend(
                            (x["device_id"], datetime.fromisoformat(x["time"]))
                            for x in event.readings
                        )
                        if len(got) >= len(items):
                            return

        def reader() -> None:
            try:
                asyncio.run(follow())
            except BaseException as exc:  # reported by the test below
                ended.append(exc)
                ready.set()

        thread = threading.Thread(target=reader, name="subscriber", daemon=True)
        thread.start()
        assert ready.wait(60), "the subscription was not made"
        assert not ended, ended
        proc = start_ingestor(broker.url, ha_db)
        sender = Publishing(
            broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=RATE / 2
        )
        wait_until(lambda: len(got) >= 200, 60, "a first 200 readings delivered")
        old = cluster.wait_primary()
        assert sender.is_alive()
        cluster.crash(old)
        cluster.wait_primary(not_this=old)
        sender.join(RECOVERY_S)
        wait_for_messages(ha_db, device_prefix, len(items), timeout=RECOVERY_S)
        thread.join(4 * RECOVERY_S)
    assert not ended, ended
    assert not thread.is_alive()
    assert len(got) == len(set(got)), "a reading delivered twice"
    assert set(got) == {(device, ts) for _, _, device, _, ts in items}
    assert proc.proc.poll() is None


def test_the_influxdb_mirror_carries_every_reading_once_through_a_primary_loss(
    cluster: LocalPatroni,
    ha_db: str,
    broker: LocalMosquitto,
    device_prefix: str,
    start_ingestor: StartIngestor,
    service_dir: Path,
) -> None:
    """The InfluxDB mirror, given the multi-host URL, follows the store through a SIGKILLed
    primary: once caught up, victoria-metrics (InfluxDB 2's write API) holds every stored
    reading, each point once."""
    records = [r for r in fleet(device_prefix, per_type=10) if r.device_type == "air_sensor"]
    register(ha_db, records)
    items = messages(records, per_device=PER_DEVICE)
    with LocalVictoria(service_dir / "victoria") as victoria:
        mirror = InfluxMirror(
            ha_db, MirrorConfig(url=victoria.url, interval=timedelta(seconds=0.2))
        )
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        failures: list[BaseException] = []

        def mirroring() -> None:
            try:
                loop.run_until_complete(mirror.run(stop))
            except BaseException as exc:  # reported by the test below
                failures.append(exc)
            finally:
                loop.close()

        thread = threading.Thread(target=mirroring, name="mirror", daemon=True)
        thread.start()
        proc = start_ingestor(broker.url, ha_db)
        sender = Publishing(
            broker.url, [(t, p) for t, p, *_ in items], f"{device_prefix}pub", rate=RATE
        )
        wait_until(lambda: message_count(ha_db, device_prefix) >= 500, 60, "a first 500 stored")
        old = cluster.wait_primary()
        assert sender.is_alive()
        cluster.crash(old)
        cluster.wait_primary(not_this=old)
        sender.join(RECOVERY_S)
        wait_for_messages(ha_db, device_prefix, len(items), timeout=RECOVERY_S)
        wait_until(lambda: _mirror_behind(ha_db) == 0, RECOVERY_S, "the mirror caught up")
        loop.call_soon_threadsafe(stop.set)
        thread.join(RECOVERY_S)
        assert not failures, failures
        expected = store_points(ha_db)
        sent = [p for series in victoria.export() for p in series["timestamps"]]
        assert victoria_points(victoria) == expected
        assert len(sent) == len(expected)  # no point twice
    assert proc.proc.poll() is None


def _mirror_behind(db_url: str) -> int | None:
    async def go() -> int | None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            now = await mirror_status(conn, MirrorConfig(url="").name)
        return None if now is None else int(now.behind)

    return asyncio.run(go())
