"""Connections that must reach the primary of a replicated PostgreSQL (Patroni and the like).

A libpq URL may list every member of a cluster (`host=a,b,c port=5432,5432,5432`, or
`postgresql://a:5432,b:5432,c:5432/db`): libpq tries them in order and, with
`target_session_attrs=read-write`, keeps only the one that takes writes. After a failover
the next connect finds the new primary by itself; nothing else needs to know where it is.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from store.errors import first_line

# What a server that is (or has become) a standby answers a write with: the writes may well
# succeed on the primary, so the batch is retried on a new connection, which finds it.
READ_ONLY_SQLSTATE: Final = "25006"


def hosts_of(conninfo: str) -> list[str]:
    """The hosts a URL names, in order (one, or several for a replicated cluster)."""
    params = conninfo_to_dict(conninfo)
    hosts = str(params.get("host") or params.get("hostaddr") or "")
    return [h for h in hosts.split(",") if h] or ["localhost"]


def writable_url(conninfo: str) -> str:
    """`conninfo` with `target_session_attrs=read-write` added where it names several hosts
    and sets none (see `primary_kwargs`), in the form it was written in.

    Raises ValueError for a URL libpq would refuse: unreadable, or naming several hosts and
    a number of ports other than one or one per host.
    """
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"not a libpq URL: {first_line(exc)}") from None
    hosts = hosts_of(conninfo)
    ports = str(params.get("port") or "").split(",")
    if len(ports) > 1 and len(ports) != len(hosts):
        raise ValueError(
            f"{len(hosts)} host(s) and {len(ports)} ports: give one port, or one per host"
        )
    if not primary_kwargs(conninfo):
        return conninfo
    if conninfo.startswith(("postgresql://", "postgres://")):
        return f"{conninfo}{'&' if '?' in conninfo else '?'}target_session_attrs=read-write"
    return f"{conninfo} target_session_attrs=read-write"


def primary_kwargs(conninfo: str) -> dict[str, Any]:
    """Connect arguments that make a URL naming several hosts reach the one taking writes.

    Without `target_session_attrs`, libpq takes the first host that answers, a standby as
    readily as the primary; a writer there gets every batch refused as read-only. A URL that
    names one host, or sets `target_session_attrs` itself, is left alone.
    """
    params = conninfo_to_dict(conninfo)
    if "target_session_attrs" in params or len(hosts_of(conninfo)) < 2:
        return {}
    return {"target_session_attrs": "read-write"}
