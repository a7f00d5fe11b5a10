"""A URL naming several hosts reaches the one taking writes; a read-only server is retried."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from silobreak.local import LocalPostgres
from store.errors import StoreUnavailable
from store.migrate import migrate
from store.primary import hosts_of, primary_kwargs, writable_url
from store.writer import ReadingsWriter

TIMEOUT = timedelta(seconds=15)


@pytest.mark.parametrize(
    ("url", "hosts", "added"),
    [
        ("postgresql://u@db1:5432/city", ["db1"], {}),
        (
            "postgresql://u@db1:5432,db2:5432,db3:5432/city",
            ["db1", "db2", "db3"],
            {"target_session_attrs": "read-write"},
        ),
        (
            "host=db1,db2 port=5432,5433 dbname=city",
            ["db1", "db2"],
            {"target_session_attrs": "read-write"},
        ),
        ("postgresql://u@db1,db2/city?target_session_attrs=any", ["db1", "db2"], {}),
        ("dbname=city", ["localhost"], {}),
    ],
)
def test_several_hosts_ask_for_the_primary_unless_the_url_says_otherwise(
    url: str, hosts: list[str], added: dict[str, str]
) -> None:
    assert hosts_of(url) == hosts
    assert primary_kwargs(url) == added


@pytest.mark.parametrize(
    ("url", "written"),
    [
        ("postgresql://u@db1/city", "postgresql://u@db1/city"),
        (
            "postgresql://u@db1,db2/city?sslmode=require",
            "postgresql://u@db1,db2/city?sslmode=require&target_session_attrs=read-write",
        ),
        ("host=db1,db2 dbname=city", "host=db1,db2 dbname=city target_session_attrs=read-write"),
        ("host=db1,db2 port=5432,5433 dbname=city target_session_attrs=any", None),
    ],
)
def test_writable_url_keeps_the_form_it_was_written_in(url: str, written: str | None) -> None:
    assert writable_url(url) == (written or url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("host=db1,db2,db3 port=5432,5433 dbname=city", r"3 host.* 2 ports"),
        ("postgresql://u@db1/city?no_such_option=1", "not a libpq URL"),
    ],
)
def test_writable_url_refuses_what_libpq_would(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        writable_url(url)


def _reading(device: str) -> tuple[object, ...]:
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    return (ts, device, "environment", 1.0, None, None, None, None, None)


def _read_only(db_url: str, on: bool) -> None:
    dbname = urlsplit(db_url).path.lstrip("/")
    # The session itself may write, whatever the database's default says.
    with psycopg.connect(
        db_url, autocommit=True, options="-c default_transaction_read_only=off"
    ) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = {}").format(
                sql.Identifier(dbname), sql.Literal("on" if on else "off")
            )
        )


@pytest.mark.integration
def test_a_batch_refused_as_read_only_is_retried_on_a_new_connection(
    db_url: str, device_prefix: str
) -> None:
    """A writer left on a server that has become a standby is refused with 25006 on every
    batch: the batch is retried (StoreUnavailable), and on a new connection, which libpq
    sends to whichever member takes writes now."""
    device = f"{device_prefix}a"

    async def go() -> int:
        writer = ReadingsWriter(db_url, timeout=TIMEOUT)
        try:
            await writer.connect()
            _read_only(db_url, on=True)
            await writer.close()
            await writer.connect()  # on a server that takes no writes
            with pytest.raises(StoreUnavailable, match="read-only"):
                await writer.write({"air_sensor": [_reading(device)]})
            _read_only(db_url, on=False)
            result = await writer.write({"air_sensor": [_reading(device)]})
            return result.stored
        finally:
            await writer.close()

    assert asyncio.run(go()) == 1


@pytest.fixture
def second_server(service_dir: Path) -> Iterator[LocalPostgres]:
    with LocalPostgres(service_dir / "pg") as pg:
        yield pg


@pytest.mark.integration
def test_a_writer_given_several_hosts_writes_to_the_one_that_takes_writes(
    db_url: str, second_server: LocalPostgres, device_prefix: str
) -> None:
    """The first host named takes no writes (as a standby would not); the writer, whose URL
    sets no `target_session_attrs`, stores on the second."""
    dbname = urlsplit(db_url).path.lstrip("/")
    with psycopg.connect(second_server.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    migrate(second_server.url_for(dbname))
    _read_only(db_url, on=True)
    first, second = urlsplit(db_url).port, second_server.port
    url = f"postgresql://postgres@127.0.0.1:{first},127.0.0.1:{second}/{dbname}"
    device = f"{device_prefix}b"

    async def go() -> None:
        # With a deadline (ingest) and without (bulk loads): both ask for the primary.
        for n, timeout in enumerate((TIMEOUT, None)):
            writer = ReadingsWriter(url, timeout=timeout)
            try:
                await writer.write({"air_sensor": [_reading(f"{device}{n}")]})
            finally:
                await writer.close()

    asyncio.run(go())
    with psycopg.connect(second_server.url_for(dbname)) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM readings_air_sensor WHERE device_id LIKE %s", [f"{device}%"]
        ).fetchone()
    assert stored == (2,)
    _read_only(db_url, on=False)
    with psycopg.connect(db_url) as conn:
        here = conn.execute(
            "SELECT count(*) FROM readings_air_sensor WHERE device_id LIKE %s", [f"{device}%"]
        ).fetchone()
    assert here == (0,)
