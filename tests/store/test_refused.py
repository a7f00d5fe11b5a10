"""Rows the database refuses for good: which errors count, the bisection that finds them, and
the writer that commits a batch without them."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.errors import StoreError, StoreRefused
from store.schema import READINGS_TABLES
from store.writer import InsertMode, ReadingsWriter, RejectRow, find_refused, refuses_rows

NOW = datetime.now(UTC).replace(microsecond=0)
AIR = READINGS_TABLES["air_sensor"]
SENTINEL = 1234.5  # a pm25 the decoder accepts and the test's CHECK refuses


# -- which errors refuse rows for good --------------------------------------------------------


@pytest.mark.parametrize(
    ("sqlstate", "column", "refused"),
    [
        ("23514", None, True),  # check_violation
        ("23503", None, True),  # foreign_key_violation
        ("23P01", None, True),  # exclusion_violation
        ("23502", "pm25", True),  # not_null_violation on a column the writer fills
        ("23502", "site", False),  # ... on one it does not: every row would fail
        ("22003", None, True),  # numeric_value_out_of_range
        ("22000", None, True),  # data_exception
        ("22023", None, True),  # invalid_parameter_value (a trigger's ERRCODE)
        ("23505", None, False),  # unique_violation: the redelivery merge's business
        ("22P03", None, False),  # invalid_binary_representation: COPY does not fit the table
        ("22P04", None, False),  # bad_copy_file_format: same
        ("42P01", None, False),  # undefined_table: an operator's mistake
        ("42501", None, False),  # insufficient_privilege: same
        ("P0001", None, False),  # raise_exception without an ERRCODE
        ("53100", None, False),  # disk_full: retryable, not refused
        ("57P01", None, False),  # admin_shutdown
        (None, None, False),  # no SQLSTATE: a connection that broke
    ],
)
def test_which_errors_refuse_rows_for_good(
    sqlstate: str | None, column: str | None, refused: bool
) -> None:
    assert refuses_rows(sqlstate, column) is refused


# -- the bisection ----------------------------------------------------------------------------


class Store:
    """A fake store refusing some items: any part holding one is refused, whole."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.written: list[int] = []
        self.parts = 0

    async def write_part(self, start: int, stop: int) -> str | None:
        self.parts += 1
        refused = [i for i in range(start, stop) if i in self.bad]
        if refused:
            return f"item {refused[0]} refused"
        self.written.extend(range(start, stop))
        return None


def run(count: int, bad: set[int]) -> tuple[Store, list[tuple[int, str]]]:
    store = Store(bad)
    found = asyncio.run(find_refused(count, store.write_part, "the batch was refused"))
    return store, found


def bound(count: int, refused: int) -> int:
    """2·k·⌈log2 N⌉ parts: two halves on each level down to each refused item."""
    return 2 * refused * math.ceil(math.log2(count))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 600).flatmap(
        lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))
    )
)
def test_bisection_finds_exactly_the_refused_and_writes_the_rest_once_in_order(
    case: tuple[int, set[int]],
) -> None:
    count, bad = case
    store, found = run(count, bad)
    assert [i for i, _ in found] == sorted(bad)
    assert store.written == [i for i in range(count) if i not in bad]  # once each, in order
    # Each one dead-lettered with its own refusal (the batch's own when it is the only item).
    for i, why in found:
        assert why == (f"item {i} refused" if count > 1 else "the batch was refused")
    assert store.parts <= bound(count, len(bad))


def test_bisection_cost_is_k_log_n_not_n() -> None:
    store, found = run(5000, {17})
    assert [i for i, _ in found] == [17]
    assert store.parts == 2 * 13  # two halves on each of the 13 levels down to item 17
    store, found = run(5000, {0, 2500, 4999})
    assert len(found) == 3
    assert store.parts <= bound(5000, 3) == 78
    store, found = run(5000, set(range(5000)))  # all refused: every part of the tree, once
    assert len(found) == 5000
    assert store.parts == 2 * 5000 - 2


def test_a_batch_refused_as_a_whole_but_by_no_part_is_written_whole() -> None:
    # Refused together (two rows in conflict), each half passes: both are written, none found.
    store, found = run(10, set())
    assert found == []
    assert store.written == list(range(10))
    assert store.parts == 2


# -- the writer, against a real PostgreSQL ----------------------------------------------------


def air_row(device: str, t: datetime, pm25: float) -> tuple[Any, ...]:
    values: list[Any] = [None] * len(AIR.metric_columns)
    values[AIR.metric_columns.index("pm25")] = pm25
    values[AIR.metric_columns.index("no2")] = 20.0
    return (t, device, "environment", *values)


def refuse_sentinel(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            f"ALTER TABLE {AIR.name} ADD CONSTRAINT pm25_sentinel CHECK (pm25 <> {SENTINEL})"
        )


def dead_letter(index: int, why: str) -> RejectRow:
    return RejectRow(NOW, f"devices/m{index}/telemetry", f"m{index}", "store_refused", why, b"{}")


def stored(db_url: str, prefix: str) -> set[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT device_id, time, pm25 FROM {AIR.name} WHERE device_id LIKE %s",
            [prefix + "%"],
        ).fetchall()
    return set(rows)


@pytest.mark.integration
@pytest.mark.parametrize("insert_mode", ["copy", "unnest"])
def test_writer_sets_aside_the_refused_messages_and_commits_the_rest(
    db_url: str, device_prefix: str, insert_mode: InsertMode
) -> None:
    refuse_sentinel(db_url)
    dev = device_prefix + "air"
    times = [NOW - timedelta(seconds=s) for s in range(3000, 0, -1)]
    # 2,400 messages of one row, and one of two; the first 50 were stored before: a
    # redelivery, found when COPY flushes its first rows, so that the merge runs before the
    # CHECK refuses a row, in the failed write and in the first parts tried.
    messages: list[tuple[str, list[tuple[Any, ...]]]] = [
        ("air_sensor", [air_row(dev, t, 10.0)]) for t in times[:2400]
    ]
    refused_at = {1150, 1151, 1900, 2399}
    for i in refused_at:
        messages[i] = ("air_sensor", [air_row(dev, times[i], SENTINEL)])
    # One row of two refused: the message is set aside whole, neither row stored.
    pair = [air_row(dev, times[2400], 11.0), air_row(dev, times[2401], SENTINEL)]
    messages.append(("air_sensor", pair))
    refused_at.add(2400)
    decode_reject = RejectRow(NOW, "devices/x/telemetry", "x", "schema_violation", "bad", b"x")

    async def go() -> Any:
        writer = ReadingsWriter(db_url, insert_mode=insert_mode, timeout=timedelta(seconds=15))
        try:
            await writer.write({"air_sensor": [r for _, rows in messages[:50] for r in rows]})
            rows = [r for _, rows in messages for r in rows]
            with pytest.raises(StoreRefused) as refused:
                await writer.write({"air_sensor": rows}, [decode_reject])
            assert refused.value.sqlstate == "23514"
            assert "pm25_sentinel" in refused.value.why
            return await writer.write_isolating(
                messages, [decode_reject], dead_letter, refused=refused.value
            )
        finally:
            await writer.close()

    done = asyncio.run(go())
    assert [i for i, _ in done.refused] == sorted(refused_at)
    for _, letter in done.refused:
        assert letter.reason == "store_refused"
        assert 'violates check constraint "pm25_sentinel"' in letter.detail
        assert letter.detail.endswith("(SQLSTATE 23514)")
    good = [rows[0] for i, (_, rows) in enumerate(messages) if i not in refused_at]
    assert stored(db_url, device_prefix) == {(r[1], r[0], r[3]) for r in good}
    assert (done.result.stored, done.result.duplicates) == (len(good) - 50, 50)
    assert done.result.rejects == 1 + len(refused_at)
    assert done.probes <= 2 * len(refused_at) * math.ceil(math.log2(len(messages)))
    with psycopg.connect(db_url) as conn:
        letters = conn.execute(
            "SELECT reason, device_id FROM rejected_messages ORDER BY id"
        ).fetchall()
    assert letters == [("schema_violation", "x")] + [
        ("store_refused", f"m{i}") for i in sorted(refused_at)
    ]


@pytest.mark.integration
@pytest.mark.parametrize(
    "mistake",
    [
        # Every row refused alike, by the table, not by what a row holds. Added with a
        # default that is then dropped: TimescaleDB refuses a NOT NULL column without one
        # on a hypertable with compression.
        (
            "ALTER TABLE readings_air_sensor ADD COLUMN site text NOT NULL DEFAULT 'x';"
            " ALTER TABLE readings_air_sensor ALTER COLUMN site DROP DEFAULT"
        ),
        # A guard that names no SQLSTATE says nothing about the rows.
        """CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'readings are frozen'; END $$;
           CREATE TRIGGER guard BEFORE INSERT ON readings_air_sensor
           FOR EACH ROW EXECUTE FUNCTION guard()""",
    ],
    ids=["not-null-column-added", "raise-without-errcode"],
)
def test_writer_does_not_call_a_table_level_mistake_a_refusal(
    db_url: str, device_prefix: str, mistake: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(mistake)

    async def go() -> None:
        writer = ReadingsWriter(db_url)
        try:
            with pytest.raises(StoreError) as failed:
                await writer.write({"air_sensor": [air_row(device_prefix + "air", NOW, 1.0)]})
            assert not isinstance(failed.value, StoreRefused)
        finally:
            await writer.close()

    asyncio.run(go())


@pytest.mark.integration
def test_a_refused_batch_leaves_the_merge_usable(db_url: str, device_prefix: str) -> None:
    """The merge's stage table, made in a transaction that failed, is made again: the writer
    remembered it as made, and every later merge on that connection failed (42P01)."""
    refuse_sentinel(db_url)
    dev = device_prefix + "air"
    rows = [air_row(dev, NOW - timedelta(seconds=s), 1.0) for s in range(1200, 0, -1)]
    # The redelivered row first: COPY meets it (when it flushes its first rows) before the
    # refused row, so the merge runs, and makes its stage table, in the refused transaction.
    refused = [rows[0], *rows[1:1100], air_row(dev, NOW, SENTINEL)]

    async def go() -> None:
        writer = ReadingsWriter(db_url)
        try:
            await writer.write({"air_sensor": rows[:1]})
            with pytest.raises(StoreRefused):
                await writer.write({"air_sensor": refused})
            result = await writer.write({"air_sensor": rows})  # the merge path again
            assert (result.stored, result.duplicates) == (1199, 1)
        finally:
            await writer.close()

    asyncio.run(go())
