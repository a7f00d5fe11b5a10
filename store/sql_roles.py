"""Database roles that read the store under the grants: one per service and data team.

Each role logs in (Grafana's datasource, or anyone's psql) with `search_path = governed` and may
read only the governed views of migration 0031: its own readings and what its live grants
allow, decided at query time from the grants table, as the HTTP API decides. The platform
role reads the platform health figures and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from store.errors import StoreError

logger = logging.getLogger(__name__)

PREFIX: Final = "grafana_"
PLATFORM_ROLE: Final = "grafana_platform"
PLATFORM_TABLES: Final = ("platform_stats", "platform_fleet_stats", "store_job_status")
GOVERNED_SCHEMA: Final = "governed"
# What the governed views' own functions read with the caller's rights: the plain backend's
# rollup watermarks (silobreak_rollup_watermark(), an SQL function inlined into the plan).
_HELPER_TABLES: Final = ("rollup_state",)
# PostgreSQL truncates identifiers past 63 bytes: two long names could map to one role.
_MAX_IDENTIFIER: Final = 63
# RFC 7677 recommends at least 4096 PBKDF2 iterations; it is PostgreSQL's default too.
_SCRAM_ITERATIONS: Final = 4096


@dataclass(frozen=True, slots=True)
class RoleChange:
    role: str
    principal: str | None  # None: the platform role
    created: bool
    password_set: bool


def role_for(principal: str, *, prefix: str = PREFIX) -> str:
    """The database role a principal reads as: `grafana_lighting`."""
    role = prefix + principal
    if len(role.encode()) > _MAX_IDENTIFIER:
        raise StoreError(
            f"principal {principal!r}: role name {role!r} is longer than PostgreSQL's "
            f"{_MAX_IDENTIFIER} bytes; use a shorter --prefix"
        )
    return role


def viewers(conn: psycopg.Connection[Any]) -> list[str]:
    """Who gets a role: enabled services, teams and coordinators (a coordinator's role sees
    its organisation's data flows), and every service that owns devices."""
    rows = conn.execute(
        "SELECT name FROM principals WHERE kind IN ('service', 'team', 'coordinator')"
        " AND disabled_at IS NULL"
        " UNION SELECT DISTINCT service FROM devices"
        " EXCEPT SELECT name FROM principals WHERE disabled_at IS NOT NULL ORDER BY 1"
    ).fetchall()
    return [str(r[0]) for r in rows]


def new_password() -> str:
    return secrets.token_urlsafe(24)


def scram_verifier(password: str, *, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores: the password itself never goes over SQL."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def ensure_roles(
    conn: psycopg.Connection[Any],
    *,
    passwords: Mapping[str, str] | None = None,
    prefix: str = PREFIX,
    min_pool: int = 5,
) -> list[RoleChange]:
    """Create or update every viewer's role and the platform role; idempotent.

    `passwords` maps role names to passwords to set (roles not in it keep theirs, or have
    none: they log in by whatever pg_hba.conf allows). Roles of disabled principals lose
    their login and see nothing. Needs CREATEROLE; `conn` in autocommit mode.
    """
    passwords = passwords or {}
    changes: list[RoleChange] = []
    with conn.transaction():
        conn.execute(
            "INSERT INTO store_settings VALUES ('streams_min_pool', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (str(min_pool),),
        )
        for principal in viewers(conn):
            role = role_for(principal, prefix=prefix)
            created = _ensure_login(conn, role, passwords.get(role))
            _grant_governed(conn, role)
            conn.execute(
                "INSERT INTO sql_viewers (role, principal) VALUES (%s, %s) ON CONFLICT (role)"
                " DO UPDATE SET principal = EXCLUDED.principal, updated_at = now()",
                (role, principal),
            )
            changes.append(RoleChange(role, principal, created, role in passwords))
        platform = prefix + PLATFORM_ROLE.removeprefix(PREFIX)
        created = _ensure_login(conn, platform, passwords.get(platform))
        _grant_platform(conn, platform)
        changes.append(RoleChange(platform, None, created, platform in passwords))
        _retire_disabled(conn, prefix)
    return changes


def _ensure_login(conn: psycopg.Connection[Any], role: str, password: str | None) -> bool:
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    ident = sql.Identifier(role)
    # Read-only viewers: no superuser, no role or database creation, no inherited rights.
    attrs = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION")
    verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
    stmt = sql.SQL("{} {} WITH {}").format(verb, ident, attrs)
    if password is not None:
        stmt = sql.SQL("{} PASSWORD {}").format(stmt, sql.Literal(scram_verifier(password)))
    conn.execute(stmt)
    conn.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(_database(conn)), ident)
    )
    return exists is None


def _grant_governed(conn: psycopg.Connection[Any], role: str) -> None:
    ident = sql.Identifier(role)
    schema = sql.Identifier(GOVERNED_SCHEMA)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, ident))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, ident))
    for table in _HELPER_TABLES:
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,):
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(table), ident))
    # The governed views first, so `readings_streetlight` is the governed one; `public` after
    # it for the functions the views call (its tables stay closed: no SELECT on them).
    # Per database: the same cluster may hold other stores.
    conn.execute(
        sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = {}, public").format(
            ident, sql.Identifier(_database(conn)), schema
        )
    )


def _grant_platform(conn: psycopg.Connection[Any], role: str) -> None:
    conn.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(map(sql.Identifier, PLATFORM_TABLES)), sql.Identifier(role)
        )
    )


def _retire_disabled(conn: psycopg.Connection[Any], prefix: str) -> None:
    rows = conn.execute(
        "DELETE FROM sql_viewers v USING principals p"
        " WHERE p.name = v.principal AND p.disabled_at IS NOT NULL RETURNING v.role"
    ).fetchall()
    for (role,) in rows:
        if str(role).startswith(prefix):
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(str(role))))
            logger.info("role %s: principal disabled, login removed", role)


def _database(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])
