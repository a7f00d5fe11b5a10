"""The demo's region: the city, two neighbouring communes and a regional energy syndicate.

`silobreak demo` runs the simulated city (the organisation `city`) and, beside it, the
household electricity meters of two neighbouring communes (firmware_sim/scenarios/
echirolles.toml and eybens.toml), each an organisation with its own coordinator and energy
service. A regional energy syndicate (`te38`) consumes the three municipalities' meters pooled
per district every 15 minutes, under three contracts its team requested, each approved by the
owning municipality's coordinator and accepted by the syndicate's (docs/organisations.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from silobreak.settings import Settings

ACTOR: Final = "demo"
CITY: Final = "city"
# (organisation, display name, shipped scenario, its energy service)
COMMUNES: Final = (
    ("echirolles", "Échirolles", "echirolles", "echirolles-energy"),
    ("eybens", "Eybens", "eybens", "eybens-energy"),
)
SYNDICATE: Final = "te38"
SYNDICATE_TEAM: Final = "te38-energy"
INTERVAL: Final = "15m"
_INTERVAL_S: Final = 900
_CONTRACT_FOR: Final = timedelta(days=365)
_TOKEN_FOR: Final = timedelta(days=1)
PURPOSE: Final = "regional electricity balance: consumption per commune and district"
ATTRIBUTION: Final = "Data: the municipalities of the Grenoble area"


def office(org: str) -> str:
    """The coordinator principal of an organisation in the demo."""
    return f"{org}-office"


@dataclass(frozen=True, slots=True)
class RegionAccess:
    """Tokens to see the region with: the syndicate team's and the city coordinator's."""

    team_token: str
    city_office_token: str
    contracts: tuple[int, ...]


def commune_fleets() -> list[tuple[str, Any]]:
    """(organisation, fleet) of each neighbouring commune."""
    from firmware_sim import build_fleet, shipped_scenario  # noqa: PLC0415

    return [(org, build_fleet(shipped_scenario(name))) for org, _, name, _ in COMMUNES]


def provision_region(settings: Settings, fleets: list[tuple[str, Any]]) -> RegionAccess:
    """Organisations, their coordinators and services, the communes' devices, the offers,
    and the syndicate's three signed contracts. Run after the city's principals exist."""
    from store.organisations import add_organisation, claim_devices, offer_stream  # noqa: PLC0415
    from store.principals import add_principal, issue_token  # noqa: PLC0415
    from store.registry import upsert_devices  # noqa: PLC0415

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        add_principal(conn, office(CITY), "coordinator", organisation=CITY, actor=ACTOR)
        for org, display, _, service in COMMUNES:
            add_organisation(conn, org, "municipality", display_name=display, actor=ACTOR)
            add_principal(conn, office(org), "coordinator", organisation=org, actor=ACTOR)
            add_principal(conn, service, "service", organisation=org, actor=ACTOR)
        add_organisation(
            conn, SYNDICATE, "syndicate", display_name="Territoire d'énergie Isère", actor=ACTOR
        )
        add_principal(conn, office(SYNDICATE), "coordinator", organisation=SYNDICATE, actor=ACTOR)
        add_principal(conn, SYNDICATE_TEAM, "team", organisation=SYNDICATE, actor=ACTOR)
        for org, fleet in fleets:
            with conn.transaction():
                claim_devices(conn, fleet.records(), org)
                upsert_devices(conn, fleet.records())
        terms = {"granularity": "aggregate", "interval": INTERVAL, "pool": "district"}
        for service, _ in _owners():
            offer_stream(conn, service, "meter", metrics=("flow",), terms=terms, actor=ACTOR)
        team = issue_token(conn, SYNDICATE_TEAM, ttl=_TOKEN_FOR, actor=ACTOR).token
        city = issue_token(conn, office(CITY), ttl=_TOKEN_FOR, actor=ACTOR).token
    contracts = asyncio.run(_contracts(settings))
    return RegionAccess(team, city, contracts)


def _owners() -> list[tuple[str, str]]:
    """(energy service, organisation) of the three municipalities."""
    return [("energy", CITY), *((service, org) for org, _, _, service in COMMUNES)]


async def _contracts(settings: Settings) -> tuple[int, ...]:
    from streams import grants  # noqa: PLC0415
    from streams.auth import Caller  # noqa: PLC0415

    team = Caller(SYNDICATE_TEAM, "team", ACTOR, organisation=SYNDICATE)
    accepting = Caller(office(SYNDICATE), "coordinator", ACTOR, organisation=SYNDICATE)
    made = []
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        for service, org in _owners():
            spec = grants.GrantSpec(
                owner=service, consumer=SYNDICATE_TEAM, device_types=("meter",),
                metrics=("flow",), districts=None, bbox=None, granularity="aggregate",
                interval_s=_INTERVAL_S, pool="district", min_devices=settings.streams_min_pool,
                purpose=PURPOSE, expires_at=datetime.now(UTC) + _CONTRACT_FOR,
                obligations={"delete_after_days": 365, "attribution": ATTRIBUTION},
            )  # fmt: skip
            min_pool = settings.streams_min_pool
            grant = await grants.create(conn, team, spec, min_pool=min_pool)
            approving = Caller(office(org), "coordinator", ACTOR, organisation=org)
            await grants.decide(
                conn, approving, grant.id, approve=True, note="demo", min_pool=min_pool
            )
            await grants.accept(conn, accepting, grant.id, note="demo")
            made.append(grant.id)
    return tuple(made)


def where_to_look(api: str, access: RegionAccess) -> list[str]:
    """The banner lines that show the region: the pooled feed, the contracts, the flows."""
    return [
        (
            f"  region     city, {', '.join(o for o, *_ in COMMUNES)} and the syndicate"
            f" {SYNDICATE}; contracts {', '.join(map(str, access.contracts))}"
        ),
        f"  pooled     SILOBREAK_API_URL={api} SILOBREAK_API_TOKEN={access.team_token} \\",
        f"             silobreak regional --type meter --interval {INTERVAL} --since 1h",
        f"  flows      SILOBREAK_API_URL={api} SILOBREAK_API_TOKEN={access.city_office_token} \\",
        "             silobreak flows",
    ]
