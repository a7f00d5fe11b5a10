"""Principals (services, data teams, the coordinator, components) and their API tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from devices.broker_auth import COMPONENT, SERVICE, check_principal, principal_username
from devices.credentials import broker_hash, new_secret, new_token, new_token_id, token_hash
from devices.errors import DevicesError
from store import audit
from store.errors import StoreError
from store.organisations import add_service, resolve_organisation

_BY_HASH: Final = """
SELECT t.token_id, t.principal, p.kind, t.expires_at, t.revoked_at, p.disabled_at,
       p.organisation
FROM api_tokens t JOIN principals p ON p.name = t.principal
WHERE t.token_hash = %s
"""

_REQUIRE: Final = "SELECT kind, disabled_at FROM principals WHERE name = %s"
_REQUIRE_LOCKED: Final = _REQUIRE + " FOR UPDATE"


class PrincipalError(StoreError):
    """A principal or token that does not exist, or cannot do what was asked."""


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    name: str
    kind: str
    organisation: str | None
    description: str
    broker_username: str
    created_at: datetime
    disabled_at: datetime | None
    live_tokens: int


@dataclass(frozen=True, slots=True)
class TokenRow:
    token_id: str
    principal: str
    label: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token: `token` is shown once and never stored."""

    token_id: str
    principal: str
    token: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What a request's bearer token resolves to, for the API to judge."""

    token_id: str
    principal: str
    kind: str
    expires_at: datetime
    revoked_at: datetime | None
    disabled_at: datetime | None
    organisation: str | None


def add_principal(
    conn: psycopg.Connection[Any],
    name: str,
    kind: str,
    *,
    organisation: str | None = None,
    description: str = "",
    actor: str,
) -> str:
    """Create a principal with its broker account; returns the account's secret (shown once).

    Services, teams and coordinators belong to `organisation` (the only one when None and
    there is one); components belong to none.
    """
    try:
        check_principal(kind, name)
    except DevicesError as exc:
        raise PrincipalError(str(exc)) from None
    secret = new_secret()
    with conn.transaction():
        org = None if kind == COMPONENT else resolve_organisation(conn, organisation)
        if kind == COMPONENT and organisation is not None:
            raise PrincipalError("a platform component belongs to no organisation")
        if kind == SERVICE and org is not None:
            add_service(conn, name, org)
        row = conn.execute(
            "INSERT INTO principals (name, kind, description, broker_hash, organisation)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING name",
            (name, kind, description, broker_hash(secret), org),
        ).fetchone()
        if row is None:
            raise PrincipalError(f"principal {name!r} already exists")
        audit.record(conn, actor, "principal.add", name, {"kind": kind, "organisation": org})
    return secret


def list_principals(
    conn: psycopg.Connection[Any], *, kind: str | None = None, organisation: str | None = None
) -> list[PrincipalRow]:
    rows = conn.execute(
        "SELECT p.name, p.kind, p.organisation, p.description, p.created_at, p.disabled_at,"
        " count(t.token_id) FILTER (WHERE t.revoked_at IS NULL AND t.expires_at > now())"
        " FROM principals p LEFT JOIN api_tokens t ON t.principal = p.name"
        " WHERE (%(k)s::text IS NULL OR p.kind = %(k)s)"
        " AND (%(o)s::text IS NULL OR p.organisation = %(o)s)"
        " GROUP BY p.name ORDER BY p.organisation NULLS FIRST, p.kind, p.name",
        {"k": kind, "o": organisation},
    ).fetchall()
    return [
        PrincipalRow(
            name, kind_, org, desc, principal_username(kind_, name), created, disabled, live
        )
        for name, kind_, org, desc, created, disabled, live in rows
    ]


def disable_principal(conn: psycopg.Connection[Any], name: str, *, actor: str) -> int:
    """Disable a principal: its tokens are revoked and its broker account removed.

    Returns how many live tokens were revoked.
    """
    with conn.transaction():
        _require(conn, name, lock=True)
        conn.execute(
            "UPDATE principals SET disabled_at = coalesce(disabled_at, now()) WHERE name = %s",
            (name,),
        )
        revoked = conn.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE principal = %s AND revoked_at IS NULL",
            (name,),
        ).rowcount
        audit.record(conn, actor, "principal.disable", name, {"tokens_revoked": revoked})
    return revoked


def rotate_broker_secret(conn: psycopg.Connection[Any], name: str, *, actor: str) -> str:
    """A new broker-account secret for the principal; the old one stops working at the sync."""
    secret = new_secret()
    with conn.transaction():
        kind, disabled = _require(conn, name, lock=True)
        if disabled is not None:
            raise PrincipalError(f"principal {name!r} is disabled")
        conn.execute(
            "UPDATE principals SET broker_hash = %s WHERE name = %s", (broker_hash(secret), name)
        )
        audit.record(conn, actor, "principal.rotate_broker_secret", name, {"kind": kind})
    return secret


def issue_token(
    conn: psycopg.Connection[Any],
    principal: str,
    *,
    ttl: timedelta,
    label: str = "",
    actor: str,
    now: datetime | None = None,
) -> IssuedToken:
    """A new API token for `principal`, valid for `ttl`; the token itself is shown once."""
    if ttl <= timedelta(0):
        raise PrincipalError("a token's lifetime must be positive")
    token, token_id = new_token(), new_token_id()
    expires = (now or datetime.now(UTC)) + ttl
    with conn.transaction():
        kind, disabled = _require(conn, principal, lock=True)
        if disabled is not None:
            raise PrincipalError(f"principal {principal!r} is disabled")
        if kind == COMPONENT:
            raise PrincipalError(
                f"principal {principal!r} is a platform component: it has a broker account, "
                "not API tokens"
            )
        conn.execute(
            "INSERT INTO api_tokens (token_id, principal, token_hash, label, expires_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (token_id, principal, token_hash(token), label, expires),
        )
        audit.record(
            conn, actor, "token.issue", principal, {"token_id": token_id, "expires_at": expires}
        )
    return IssuedToken(token_id, principal, token, expires)


def revoke_token(conn: psycopg.Connection[Any], token_id: str, *, actor: str) -> str:
    """Revoke a token by its id; returns the principal it belonged to."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())"
            " WHERE token_id = %s RETURNING principal",
            (token_id,),
        ).fetchone()
        if row is None:
            raise PrincipalError(f"no token {token_id!r} (see `silobreak principals token list`)")
        audit.record(conn, actor, "token.revoke", row[0], {"token_id": token_id})
    return str(row[0])


def list_tokens(conn: psycopg.Connection[Any], *, principal: str | None = None) -> list[TokenRow]:
    rows = conn.execute(
        "SELECT token_id, principal, label, created_at, expires_at, revoked_at FROM api_tokens"
        " WHERE (%(p)s::text IS NULL OR principal = %(p)s) ORDER BY created_at, token_id",
        {"p": principal},
    ).fetchall()
    return [TokenRow(*row) for row in rows]


async def lookup_token(conn: psycopg.AsyncConnection[Any], token: str) -> TokenRecord | None:
    """The record of a presented token, or None when no such token was ever issued."""
    cur = await conn.execute(_BY_HASH, (token_hash(token),))
    row = await cur.fetchone()
    return None if row is None else TokenRecord(*row)


def _require(
    conn: psycopg.Connection[Any], name: str, *, lock: bool = False
) -> tuple[str, datetime | None]:
    query = _REQUIRE_LOCKED if lock else _REQUIRE
    row = conn.execute(query, (name,)).fetchone()
    if row is None:
        raise PrincipalError(f"no principal {name!r} (see `silobreak principals list`)")
    return str(row[0]), row[1]
