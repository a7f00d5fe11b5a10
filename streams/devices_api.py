"""`/v1/devices`: the registry as each caller may see it (its own service's, or all)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from store.lifecycle import DeviceFilter, DeviceInfo, find_devices_async
from streams.auth import CallerDep, forbidden
from streams.errors import ApiError

router = APIRouter(prefix="/v1/devices", tags=["devices"])

# One page: enough for a district's fleet, small enough to answer in well under a second.
MAX_PAGE: Final = 10_000
DEFAULT_PAGE: Final = 1000


class Device(BaseModel):
    device_id: str
    device_type: str
    service: str
    district: str | None
    lat: float | None
    lon: float | None
    medium: str | None
    installed_at: datetime | None
    lifecycle: Literal["active", "decommissioned"]
    connection: Literal["online", "offline"]
    last_seen: datetime | None
    credential: Literal["active", "revoked", "none"]


class DevicePage(BaseModel):
    devices: list[Device]
    # Pass as `after` for the next page; null on the last one.
    next_after: str | None


@router.get("", response_model=DevicePage)
async def list_devices(
    request: Request,
    caller: CallerDep,
    service: str | None = None,
    device_type: Annotated[str | None, Query(alias="type")] = None,
    district: str | None = None,
    lifecycle: Literal["active", "decommissioned"] | None = None,
    connection: Literal["online", "offline"] | None = None,
    seen_since: Annotated[datetime | None, Query(description="last seen at or after")] = None,
    unseen_since: Annotated[datetime | None, Query(description="not seen since, or never")] = None,
    after: Annotated[str | None, Query(description="the previous page's next_after")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> DevicePage:
    """Registered devices, filtered; a service sees its own devices, a coordinator its
    organisation's."""
    scope = _scope(caller.is_coordinator, caller.service, service, caller.principal)
    where = DeviceFilter(
        service=scope,
        device_type=device_type,
        district=district,
        lifecycle=lifecycle,
        connection=connection,
        seen_since=seen_since,
        unseen_since=unseen_since,
        after=after,
        limit=limit,
        organisation=caller.organisation if caller.is_coordinator else None,
    )
    if scope is None and not caller.is_coordinator:
        return DevicePage(devices=[], next_after=None)  # owns no devices
    async with request.app.state.pool.connection() as conn:
        rows = await find_devices_async(conn, where)
    full = len(rows) == limit
    return DevicePage(
        devices=[_device(r) for r in rows], next_after=rows[-1].device_id if full else None
    )


@router.get("/{device_id}", response_model=Device)
async def get_device(request: Request, caller: CallerDep, device_id: str) -> Device:
    """One device, if the caller's service owns it (or the caller is its organisation's
    coordinator)."""
    org = caller.organisation
    async with request.app.state.pool.connection() as conn:
        rows = await find_devices_async(
            conn, DeviceFilter(device_id=device_id, limit=1, organisation=org)
        )
    if not rows:
        # Another organisation's device is not there, as far as the caller can tell.
        raise ApiError(404, "unknown_device", f"no device {device_id!r} in the registry")
    if not caller.is_coordinator and rows[0].service != caller.service:
        raise forbidden("not_owner", f"device {device_id!r} belongs to another service")
    return _device(rows[0])


def _scope(coordinator: bool, own: str | None, asked: str | None, principal: str) -> str | None:
    """The service to filter by: what was asked, within the caller's rights."""
    if coordinator:
        return asked
    if asked is not None and asked != own:
        raise forbidden(
            "not_owner", f"{principal} may list only its own service's devices, not {asked!r}"
        )
    return own


def _device(r: DeviceInfo) -> Device:
    return Device.model_validate(r, from_attributes=True)
