"""The connection pool of a streams process: the API's requests and the feeds' reads share it.

A connection that carries session state (LISTEN, advisory-lock leases) or is held for the
life of a task (the hub's ticks, a delivery worker, the audit writer) is a connection of its
own; everything that runs a query or a transaction and gives the connection back takes one
from here.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

# Connections to the store: a request or a feed's page holds one for a query or two; ten
# serve hundreds of requests a second, and stay well under PostgreSQL's default
# max_connections of 100 beside the gateway's own (hub, listener, lease, workers, audit).
POOL_MAX: Final = 10
# How long a request or a feed's page waits for a pooled connection before it fails
# (a request is answered 503; a feed ends its stream and the client resumes from its cursor).
POOL_TIMEOUT_S: Final = 5.0

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


def new_pool(conninfo: str) -> Pool:
    """A pool not yet opened: `await pool.open(wait=False)` in the running loop."""
    return AsyncConnectionPool(
        conninfo,
        min_size=1,
        max_size=POOL_MAX,
        timeout=POOL_TIMEOUT_S,
        kwargs={"autocommit": True, "application_name": "silobreak-streams"},
        open=False,
    )
