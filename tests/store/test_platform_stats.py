"""Platform figures in the store: a column for every dead-letter reason, recorded as counted."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ingest.decode import REASONS as DEAD_LETTER_REASONS
from ingest.decode import STORE_REFUSED
from ingest.metrics import IngestMetrics
from silobreak.recorder import Counters, window
from store.platform_stats import REASONS, record_ingest

AT = datetime(2026, 11, 26, 6, tzinfo=UTC)


def test_platform_stats_count_every_reason_a_dead_letter_can_have() -> None:
    assert REASONS == DEAD_LETTER_REASONS


@pytest.mark.integration
def test_the_table_has_a_column_for_every_reason(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'platform_stats' AND column_name LIKE 'rejected\\_%'"
            ).fetchall()
        }
    assert columns == {f"rejected_{r}" for r in REASONS}


@pytest.mark.integration
def test_store_refused_messages_are_recorded_in_their_own_column(db_url: str) -> None:
    metrics = IngestMetrics()
    before = Counters.read(metrics.registry)
    metrics.received.inc(10)
    metrics.stored.inc(7)
    metrics.rejected.labels("schema_violation").inc(1)
    metrics.rejected.labels(STORE_REFUSED).inc(2)
    row = window(before, Counters.read(metrics.registry), source="ingest:a", at=AT,
                 span=timedelta(seconds=10))  # fmt: skip

    async def record() -> None:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            await record_ingest(conn, row)

    asyncio.run(record())
    with psycopg.connect(db_url, autocommit=True) as conn:
        got = conn.execute(
            "SELECT received, stored, rejected_schema_violation, rejected_store_refused,"
            " rejected_unknown_device FROM platform_stats WHERE source = 'ingest:a'"
        ).fetchone()
        # A recorder of an earlier release names only the columns of 0030: its rows count 0.
        conn.execute(
            "INSERT INTO platform_stats (time, source, window_s, received, stored, duplicates,"
            " rejected_payload_too_large, rejected_malformed_payload, rejected_unknown_device,"
            " rejected_schema_violation, rejected_timestamp_out_of_range, pending, batches,"
            " commit_s, store_up) VALUES (%s, 'ingest:old', 10, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1,"
            " 0.01, true)",
            [AT],
        )
        old = conn.execute(
            "SELECT rejected_store_refused FROM platform_stats WHERE source = 'ingest:old'"
        ).fetchone()
    assert got == (10, 7, 1, 2, 0)
    assert old == (0,)
