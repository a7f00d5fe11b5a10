"""`/v1/grants`: owners grant, consumers request, owners approve, refuse, revoke; ODRL in, out."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from devices.catalog import DEVICE_TYPES
from streams import audit, grants, odrl
from streams.auth import CallerDep, forbidden
from streams.gateway import GatewayDep
from streams.scope import Grant

router = APIRouter(prefix="/v1/grants", tags=["grants"])

_DURATION_RE: Final = re.compile(r"(\d{1,6})(s|m|h|d)")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Aggregate intervals: from a second (tests, dashboards) to a week (monthly reports use days).
MIN_INTERVAL_S: Final = 1
MAX_INTERVAL_S: Final = 7 * 86400
NAME: Final = r"^[a-z][a-z0-9_-]{0,62}$"
# Ids are bigserial: anything larger than this was never issued (and would overflow bigint).
GrantId = Annotated[int, Path(ge=1, le=2**62)]


def _known_type(name: str) -> str:
    # The active catalog's (the one recorded in the database): types added by an operator's
    # catalog are accepted with no change here.
    if name not in DEVICE_TYPES:
        raise ValueError(f"unknown device type {name!r} (one of {', '.join(DEVICE_TYPES)})")
    return name


DeviceType = Annotated[str, Field(max_length=30), AfterValidator(_known_type)]


class Obligations(BaseModel):
    """What the consumer accepts to do with the data (carried with every delivery)."""

    model_config = ConfigDict(extra="forbid")

    delete_after_days: Annotated[
        int | None, Field(ge=1, le=grants.MAX_DELETE_AFTER_DAYS, description="delete after")
    ] = None
    attribution: Annotated[
        str | None, Field(min_length=1, max_length=grants.MAX_ATTRIBUTION, pattern=r"\S")
    ] = None


class GrantIn(BaseModel):
    """A grant (by the owning service) or a request for one (by the consumer)."""

    model_config = ConfigDict(extra="forbid")

    owner: Annotated[str, Field(pattern=NAME, description="the service whose data this is")]
    consumer: Annotated[str, Field(pattern=NAME, description="the service or team that reads")]
    device_types: Annotated[list[DeviceType], Field(min_length=1, max_length=200)]
    metrics: Annotated[list[str], Field(max_length=32, description="empty: all")] = []
    districts: Annotated[list[str] | None, Field(max_length=500)] = None
    bbox: Annotated[
        tuple[float, float, float, float] | None,
        Field(description="[min_lon, min_lat, max_lon, max_lat]"),
    ] = None
    granularity: Literal["raw", "aggregate"]
    interval: Annotated[str | None, Field(description="aggregates: 30s, 15m, 1h, 1d")] = None
    pool: Literal["device", "district"] | None = None
    min_devices: Annotated[int | None, Field(ge=1, le=100_000)] = None
    purpose: Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]
    expires_at: AwareDatetime
    obligations: Annotated[Obligations, Field(description="what the consumer must do")] = (
        Obligations()
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str | None) -> str | None:
        if value is not None:
            seconds = interval_seconds(value)
            if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
                raise ValueError("interval must be between 1s and 7d")
        return value

    @field_validator("bbox")
    @classmethod
    def _bbox(
        cls, value: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if value is not None:
            x0, y0, x1, y1 = value
            if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
                raise ValueError("bbox is [min_lon, min_lat, max_lon, max_lat] within the globe")
        return value


class GrantOut(BaseModel):
    id: int
    owner: str
    consumer: str
    device_types: list[str]
    metrics: list[str]
    districts: list[str] | None
    bbox: tuple[float, float, float, float] | None
    granularity: str
    interval_s: int | None
    pool: str | None
    min_devices: int | None
    purpose: str
    expires_at: datetime
    status: str
    created_by: str
    created_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    note: str
    owner_org: str
    consumer_org: str
    obligations: dict[str, Any]
    redistribution: Literal["prohibited"] = "prohibited"
    owner_approved_by: str | None
    owner_approved_at: datetime | None
    consumer_accepted_by: str | None
    consumer_accepted_at: datetime | None
    # A contract between two organisations: who has yet to sign it.
    awaiting: list[Literal["owner_coordinator", "consumer_coordinator"]]


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Annotated[str, Field(max_length=2000)] = ""


GrantStatus = Literal["requested", "active", "refused", "revoked", "expired"]


@router.post("", status_code=201, response_model=GrantOut)
async def create_grant(
    request: Request, caller: CallerDep, gateway: GatewayDep, body: GrantIn
) -> GrantOut:
    """Grant (as the owning service: active at once) or request (as the consumer) access."""
    spec = grants.GrantSpec(
        owner=body.owner,
        consumer=body.consumer,
        device_types=tuple(body.device_types),
        metrics=tuple(body.metrics),
        districts=None if body.districts is None else tuple(body.districts),
        bbox=body.bbox,
        granularity=body.granularity,
        interval_s=None if body.interval is None else interval_seconds(body.interval),
        pool=body.pool,
        min_devices=body.min_devices,
        purpose=body.purpose.strip(),
        expires_at=body.expires_at,
        obligations=body.obligations.model_dump(exclude_none=True),
    )
    async with request.app.state.pool.connection() as conn:
        grant = await grants.create(conn, caller, spec, min_pool=gateway.config.min_pool)
    return out(grant)


@router.get("", response_model=list[GrantOut])
async def list_grants(
    request: Request, caller: CallerDep, status: GrantStatus | None = None
) -> list[GrantOut]:
    """Grants the caller owns or holds (every grant, for the coordinator)."""
    async with request.app.state.pool.connection() as conn:
        found = await grants.visible_to(conn, caller, status=status)
    return [out(g) for g in found]


@router.post("/odrl", status_code=201, response_model=GrantOut)
async def import_odrl(
    request: Request,
    caller: CallerDep,
    gateway: GatewayDep,
    policy: Annotated[dict[str, Any], Body(description="an ODRL 2.2 Offer or Request")],
) -> GrantOut:
    """Request a grant by an ODRL Offer or Request (JSON-LD, silobreak's subset, docs/contracts.md);
    the caller is the assignee. A term outside the subset: 422 `odrl_unsupported` naming it."""
    spec = odrl.grant_spec(policy)
    if spec.consumer != caller.principal:
        raise forbidden(
            "not_assignee", f"{caller.principal} imports policies whose assignee is itself"
        )
    detail = {"via": "odrl", "policy_uid": str(policy.get("uid", ""))}
    async with request.app.state.pool.connection() as conn:
        grant = await grants.create(
            conn, caller, spec, min_pool=gateway.config.min_pool, detail=detail
        )
    return out(grant)


@router.get("/{grant_id}", response_model=GrantOut)
async def get_grant(request: Request, caller: CallerDep, grant_id: GrantId) -> GrantOut:
    async with request.app.state.pool.connection() as conn:
        grant = await grants.get(conn, grant_id)
    grants.check_visible(caller, grant)
    return out(grant)


@router.get("/{grant_id}/odrl", response_class=JSONResponse)
async def export_odrl(request: Request, caller: CallerDep, grant_id: GrantId) -> JSONResponse:
    """The grant as an ODRL 2.2 Agreement (JSON-LD); the same readers as the grant itself."""
    async with request.app.state.pool.connection() as conn, conn.transaction():
        grant = await grants.get(conn, grant_id)
        grants.check_visible(caller, grant)
        await audit.record(
            conn,
            audit.Event(
                caller.principal, "grant.export_odrl", grant.owner, grant.consumer, grant.id
            ),
        )
    return JSONResponse(odrl.agreement(grant), media_type=odrl.MEDIA_TYPE)


@router.post("/{grant_id}/approve", response_model=GrantOut)
async def approve(
    request: Request, caller: CallerDep, gateway: GatewayDep, grant_id: GrantId, body: Decision
) -> GrantOut:
    """The owner approves a requested grant; across organisations, the owner's coordinator."""
    async with request.app.state.pool.connection() as conn:
        grant = await grants.decide(
            conn, caller, grant_id, approve=True, note=body.note, min_pool=gateway.config.min_pool
        )
    return out(grant)


@router.post("/{grant_id}/accept", response_model=GrantOut)
async def accept(
    request: Request, caller: CallerDep, grant_id: GrantId, body: Decision
) -> GrantOut:
    """The consumer's coordinator accepts the terms of a contract between organisations."""
    async with request.app.state.pool.connection() as conn:
        grant = await grants.accept(conn, caller, grant_id, note=body.note)
    return out(grant)


@router.post("/{grant_id}/refuse", response_model=GrantOut)
async def refuse(
    request: Request, caller: CallerDep, gateway: GatewayDep, grant_id: GrantId, body: Decision
) -> GrantOut:
    """The owner refuses a requested grant (say why in `note`)."""
    async with request.app.state.pool.connection() as conn:
        grant = await grants.decide(
            conn, caller, grant_id, approve=False, note=body.note, min_pool=gateway.config.min_pool
        )
    return out(grant)


@router.post("/{grant_id}/revoke", response_model=GrantOut)
async def revoke(
    request: Request, caller: CallerDep, grant_id: GrantId, body: Decision
) -> GrantOut:
    """End a grant now: live delivery stops within one poll, history is refused at once."""
    async with request.app.state.pool.connection() as conn:
        grant = await grants.revoke(conn, caller, grant_id, note=body.note)
    return out(grant)


def interval_seconds(text: str) -> int:
    """`30s`, `15m`, `1h`, `1d` -> seconds."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an interval such as 30s, 15m, 1h or 1d")
    return int(match[1]) * _UNIT_S[match[2]]


def out(g: Grant) -> GrantOut:
    return GrantOut(
        id=g.id, owner=g.owner, consumer=g.consumer, device_types=list(g.device_types),
        metrics=list(g.metrics), districts=None if g.districts is None else list(g.districts),
        bbox=g.bbox, granularity=g.granularity, interval_s=g.interval_s, pool=g.pool,
        min_devices=g.min_devices, purpose=g.purpose, expires_at=g.expires_at, status=g.status,
        created_by=g.created_by, created_at=g.created_at, decided_by=g.decided_by,
        decided_at=g.decided_at, note=g.note, owner_org=g.owner_org, consumer_org=g.consumer_org,
        obligations=dict(g.obligations), owner_approved_by=g.owner_approved_by,
        owner_approved_at=g.owner_approved_at, consumer_accepted_by=g.consumer_accepted_by,
        consumer_accepted_at=g.consumer_accepted_at, awaiting=awaiting(g),
    )  # fmt: skip


def awaiting(g: Grant) -> list[Literal["owner_coordinator", "consumer_coordinator"]]:
    if not g.cross_org or g.status != "requested":
        return []
    waiting: list[Literal["owner_coordinator", "consumer_coordinator"]] = []
    if g.owner_approved_at is None:
        waiting.append("owner_coordinator")
    if g.consumer_accepted_at is None:
        waiting.append("consumer_coordinator")
    return waiting
