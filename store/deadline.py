"""Database calls that cannot hang: a connect timeout, and a deadline that severs a silent link."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from store.primary import primary_kwargs

logger = logging.getLogger(__name__)

# A batch commits in ~50 ms here (docs/benchmarks.md) and a connection opens in a few ms:
# 300 times that is no slow database but a dead link or a frozen host. Short enough that an
# ingestor reconnects well within the broker's patience; long enough for a checkpoint storm.
DEFAULT_TIMEOUT: Final = timedelta(seconds=15)
_Target = psycopg.AsyncConnection[Any] | Callable[[], psycopg.AsyncConnection[Any] | None]
# libpq rounds connect_timeout to whole seconds and treats anything below 2 as 2.
_MIN_CONNECT_TIMEOUT_S: Final = 2


def connect_kwargs(conninfo: str, timeout: timedelta) -> dict[str, Any]:
    """Connect arguments that bound every wait by `timeout`, on both ends of the connection.

    - `connect_timeout`: without it, a host that accepts TCP but never answers (a frozen
      server, a proxy whose far side is gone) keeps the startup handshake waiting forever.
    - `statement_timeout` and `idle_in_transaction_session_timeout` for the session: when the
      link dies in mid-transaction, the server never hears of it and its backend keeps the
      transaction's locks (a COPY waiting for rows, an UPDATE of devices before its COMMIT),
      so the retry on a new connection would wait behind them until TCP gives up, hours
      later. With these the server ends such a backend when the client's deadline ends its
      call. Our statements take milliseconds, and a longer one the deadline cuts anyway.

    - `target_session_attrs=read-write` when the URL names several hosts
      (`store.primary.primary_kwargs`): the caller writes, so it needs the primary.

    `connect_timeout` bounds each host's attempt, so a URL naming n silent hosts may wait n
    times `timeout` before the connect fails. What the URL sets itself is left alone.
    """
    params = conninfo_to_dict(conninfo)
    kwargs: dict[str, Any] = primary_kwargs(conninfo)
    if "connect_timeout" not in params:
        seconds = max(_MIN_CONNECT_TIMEOUT_S, math.ceil(timeout.total_seconds()))
        kwargs["connect_timeout"] = seconds
    options = str(params.get("options") or "")
    millis = int(timeout.total_seconds() * 1000)
    ours = [
        f"-c {name}={millis}"
        for name in ("statement_timeout", "idle_in_transaction_session_timeout")
        if name not in options
    ]
    if ours:
        kwargs["options"] = " ".join([*ours, options]).strip()
    return kwargs


class Deadline:
    """Severs the watched connection if a call on it has not returned within `timeout`.

    A database behind a link that drops packets never answers and never closes: psycopg waits
    on the socket forever. Cancelling the waiting task is no cure, since psycopg then sends a
    cancel request over a new connection to the same dead host and waits up to 10 s more for
    it. Shutting the socket down instead ends the pending read with EOF at once, so the call
    fails as any broken connection does and is retried as one. `expired` tells the two apart.
    """

    def __init__(self, timeout: timedelta) -> None:
        self.timeout = timeout
        self.expired = False

    @contextlib.contextmanager
    def watch(self, target: _Target) -> Iterator[Deadline]:
        """Arm the deadline for the block: `target` is the connection to sever when it fires,
        or a function naming it then (for a caller that may open a new one meanwhile)."""
        self.expired = False

        def fire() -> None:
            self.expired = True
            conn = target if isinstance(target, psycopg.AsyncConnection) else target()
            if conn is not None:
                logger.debug("no answer from the database in %s; severing", self.timeout)
                sever(conn)

        handle = asyncio.get_running_loop().call_later(self.timeout.total_seconds(), fire)
        try:
            yield self
        finally:
            handle.cancel()

    def describe(self) -> str:
        return f"database did not answer within {self.timeout.total_seconds():g} s"


def sever(conn: psycopg.AsyncConnection[Any]) -> None:
    """Shut the connection's socket down (both ways): a pending read returns EOF at once."""
    if conn.closed:
        return
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return
    # A duplicate of the descriptor: closing it leaves psycopg's own open, which psycopg and
    # the event loop still watch; shutdown() acts on the shared socket.
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fd)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Session:
    """A server backend, named by its pid and start time (a pid alone may be reused), and
    the server it ran on, by its postmaster's start time: after a failover the next connect
    reaches another server, where the same pid is someone else's session."""

    pid: int
    started: datetime
    server_started: datetime


async def session_of(conn: psycopg.AsyncConnection[Any]) -> Session | None:
    """The server session behind `conn`, or None where the server does not list it."""
    cur = await conn.execute(
        "SELECT pid, backend_start, pg_postmaster_start_time() FROM pg_stat_activity"
        " WHERE pid = pg_backend_pid()"
    )
    row = await cur.fetchone()
    if row is None or row[1] is None or row[2] is None:
        return None
    return Session(row[0], row[1], row[2])


async def end_session(conn: psycopg.AsyncConnection[Any], session: Session) -> bool:
    """End the server session of a connection given up on; True if it was still there.

    A severed link ends the client's side only. The server's backend lives on until TCP
    gives up on the peer, hours later on a link that drops packets, and with it its open
    transaction and the locks it holds: the keys of a batch it had inserted but not committed.
    `idle_in_transaction_session_timeout` ends a backend that waits between statements, but
    one waiting for the client inside a statement (COPY FROM STDIN, mid-batch) heeds no
    timeout, and the batch's retry waits on those keys behind it. Only a terminate reaches
    it; a role may end its own sessions.

    Only on the server the session ran on: a connection that reached another one (a standby
    promoted after a failover, the same server restarted) finds nothing to end.
    """
    cur = await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE pid = %s AND backend_start = %s AND pg_postmaster_start_time() = %s",
        [session.pid, session.started, session.server_started],
    )
    row = await cur.fetchone()
    if row is None:
        return False
    logger.info("ended the server session %d of a connection given up on", session.pid)
    return bool(row[0])
