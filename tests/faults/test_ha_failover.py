"""The primary of a Patroni cluster lost or handed over while ingest stores: nothing lost.

One cluster for the module: three etcd members, three PostgreSQL members under Patroni in
`synchronous_mode_strict`. The ingestor is given the multi-host URL of all three and finds
the primary on its own; it acknowledges a message to the broker only after the commit,
which the synchronous standby has confirmed, so the standby that takes over has it.
"""

from __future__ import annotations

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
def cluster(services_root: Path) -> Iterator[LocalPatroni]:
    why = missing()
    assert why is None, why
    base = services_root / f"ha{uuid.uuid4().hex[:8]}"
    base.mkdir()
    base.chmod(0o755)
    etcd = LocalEtcd(base / "etcd")
    patroni = LocalPatroni(base / "patroni", etcd)
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
def ha_db(cluster: LocalPatroni) -> str:
    """A migrated database of this test's own on the cluster: its multi-host URL.

    Every member is running and the primary has its synchronous standby before the test
    starts (a member an earlier test crashed has rejoined)."""
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
