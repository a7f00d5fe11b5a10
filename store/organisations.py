"""Organisations above services: which organisation a service, principal or device belongs to.

One platform serves several municipalities and the regional bodies that consume their data.
Each organisation's services, teams, coordinator and devices are its own; another
organisation sees none of them without a grant (docs/organisations.md). A service name and a
device id are unique on the whole platform, as a LoRaWAN device EUI is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg

from devices.catalog import DEVICE_TYPES
from devices.errors import RegistryImportError
from devices.registry import DeviceRecord
from store import audit
from store.errors import StoreError

# What kinds of body share the platform: a commune, its metropolitan authority, a regional
# syndicate or federation (an energy authority pooling its communes' data), a utility, a region.
ORG_KINDS: Final = ("municipality", "metropolis", "syndicate", "federation", "utility", "region")
NAME_PATTERN: Final = "[a-z][a-z0-9_-]{0,62}"


class OrganisationError(StoreError):
    """An organisation that does not exist, or a change that would cross organisations."""


@dataclass(frozen=True, slots=True)
class OrganisationRow:
    name: str
    kind: str
    display_name: str
    services: int
    principals: int
    devices: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Offer:
    """A stream one organisation lets the others discover, and the terms it offers."""

    id: int
    service: str
    organisation: str
    device_type: str
    metrics: tuple[str, ...]
    districts: tuple[str, ...] | None
    terms: dict[str, Any]
    created_at: datetime


def add_organisation(
    conn: psycopg.Connection[Any], name: str, kind: str, *, display_name: str = "", actor: str
) -> None:
    if kind not in ORG_KINDS:
        kinds = ", ".join(ORG_KINDS)
        raise OrganisationError(f"unknown organisation kind {kind!r} (one of {kinds})")
    if re.fullmatch(NAME_PATTERN, name) is None:
        raise OrganisationError(f"organisation name {name!r} must match {NAME_PATTERN}")
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO organisations (name, kind, display_name) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING RETURNING name",
            (name, kind, display_name),
        ).fetchone()
        if row is None:
            raise OrganisationError(f"organisation {name!r} already exists")
        audit.record(conn, actor, "organisation.add", name, {"kind": kind})


def list_organisations(conn: psycopg.Connection[Any]) -> list[OrganisationRow]:
    rows = conn.execute(
        "SELECT o.name, o.kind, o.display_name,"
        " (SELECT count(*) FROM services s WHERE s.organisation = o.name),"
        " (SELECT count(*) FROM principals p WHERE p.organisation = o.name),"
        " (SELECT count(*) FROM devices d JOIN services s ON s.name = d.service"
        "  WHERE s.organisation = o.name),"
        " o.created_at FROM organisations o ORDER BY o.name"
    ).fetchall()
    return [OrganisationRow(*row) for row in rows]


def resolve_organisation(conn: psycopg.Connection[Any], asked: str | None) -> str:
    """The organisation named, or the only one when none is named."""
    names = [str(r[0]) for r in conn.execute("SELECT name FROM organisations ORDER BY name")]
    if asked is not None:
        if asked not in names:
            raise OrganisationError(f"no organisation {asked!r} (see `silobreak orgs list`)")
        return asked
    if len(names) == 1:
        return names[0]
    raise OrganisationError(
        f"this platform has {len(names)} organisations: name one with --org ({', '.join(names)})"
    )


def service_organisation(conn: psycopg.Connection[Any], service: str) -> str | None:
    row = conn.execute("SELECT organisation FROM services WHERE name = %s", (service,)).fetchone()
    return None if row is None else str(row[0])


def add_service(conn: psycopg.Connection[Any], name: str, organisation: str) -> None:
    """Make `name` a service of `organisation` (nothing to do if it already is)."""
    found = service_organisation(conn, name)
    if found is None:
        conn.execute(
            "INSERT INTO services (name, organisation) VALUES (%s, %s)"
            " ON CONFLICT (name) DO NOTHING",
            (name, organisation),
        )
        found = service_organisation(conn, name)
    if found != organisation:
        # Service names are platform-wide; which organisation holds one is not said.
        raise OrganisationError(f"service name {name!r} is taken on this platform")


def claim_devices(
    conn: psycopg.Connection[Any], records: Sequence[DeviceRecord], organisation: str
) -> None:
    """Check an import for `organisation` before it writes, and register its new services.

    Refused, naming the line and nothing of any other organisation: a service of another
    organisation, and a device id another organisation already registered.
    """
    services = sorted({r.service for r in records})
    known: dict[str, str] = dict(
        conn.execute(
            "SELECT name, organisation FROM services WHERE name = ANY(%s)", (services,)
        ).fetchall()
    )
    ids = [r.device_id for r in records]
    taken = {
        str(row[0])
        for row in conn.execute(
            "SELECT d.device_id FROM devices d JOIN services s ON s.name = d.service"
            " WHERE d.device_id = ANY(%s) AND s.organisation <> %s",
            (ids, organisation),
        )
    }
    problems: list[tuple[int, str]] = []
    for n, rec in enumerate(records, start=1):
        line = rec.source_line or n
        if known.get(rec.service, organisation) != organisation:
            problems.append((line, f"service {rec.service!r} is not a service of {organisation}"))
        elif rec.device_id in taken:
            problems.append(
                (line, f"device id {rec.device_id!r} is already registered on this platform")
            )
    if problems:
        raise RegistryImportError(problems)
    for name in services:
        if name not in known:
            add_service(conn, name, organisation)


def offer_stream(
    conn: psycopg.Connection[Any],
    service: str,
    device_type: str,
    *,
    metrics: Sequence[str] = (),
    districts: Sequence[str] | None = None,
    terms: Mapping[str, Any] | None = None,
    actor: str,
) -> int:
    """Let other organisations discover one of `service`'s streams (replacing its offer)."""
    if device_type not in DEVICE_TYPES:
        raise OrganisationError(f"unknown device type {device_type!r}")
    bad = [m for m in metrics if m not in DEVICE_TYPES[device_type].metric_names]
    if bad:
        raise OrganisationError(f"{', '.join(bad)} not a metric of {device_type}")
    if service_organisation(conn, service) is None:
        raise OrganisationError(f"no service {service!r}")
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO stream_offers (service, device_type, metrics, districts, terms,"
            " created_by) VALUES (%s, %s, %s, %s, %s::jsonb, %s)"
            " ON CONFLICT (service, device_type) DO UPDATE SET metrics = EXCLUDED.metrics,"
            " districts = EXCLUDED.districts, terms = EXCLUDED.terms,"
            " created_by = EXCLUDED.created_by, created_at = now(), withdrawn_at = NULL"
            " RETURNING id",
            (
                service, device_type, list(metrics),
                None if districts is None else list(districts),
                json.dumps(dict(terms or {})), actor,
            ),
        ).fetchone()  # fmt: skip
        assert row is not None
        audit.record(conn, actor, "stream.offer", service, {"device_type": device_type})
    return int(row[0])


def withdraw_offer(
    conn: psycopg.Connection[Any], service: str, device_type: str, *, actor: str
) -> None:
    with conn.transaction():
        done = conn.execute(
            "UPDATE stream_offers SET withdrawn_at = now() WHERE service = %s"
            " AND device_type = %s AND withdrawn_at IS NULL",
            (service, device_type),
        ).rowcount
        if not done:
            raise OrganisationError(f"{service} offers no {device_type} stream")
        audit.record(conn, actor, "stream.withdraw", service, {"device_type": device_type})


_OFFERS: Final = (
    "SELECT o.id, o.service, s.organisation, o.device_type, o.metrics, o.districts, o.terms,"
    " o.created_at FROM stream_offers o JOIN services s ON s.name = o.service"
    " WHERE o.withdrawn_at IS NULL"
)


def list_offers(conn: psycopg.Connection[Any]) -> list[Offer]:
    return [_offer(row) for row in conn.execute(_OFFERS + " ORDER BY o.id").fetchall()]


async def offers_async(conn: psycopg.AsyncConnection[Any]) -> list[Offer]:
    cur = await conn.execute(_OFFERS + " ORDER BY o.id")
    return [_offer(row) for row in await cur.fetchall()]


def _offer(row: tuple[Any, ...]) -> Offer:
    oid, service, org, device_type, metrics, districts, terms, created = row
    return Offer(
        oid, service, org, device_type, tuple(metrics),
        None if districts is None else tuple(districts), dict(terms), created,
    )  # fmt: skip
