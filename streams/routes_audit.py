"""`/v1/audit`: the access record, for the owning service and the coordinator."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from streams import audit
from streams.auth import CallerDep, forbidden

router = APIRouter(prefix="/v1/audit", tags=["audit"])

MAX_PAGE: Final = 10_000


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    owner: str | None
    consumer: str | None
    grant_id: int | None
    subscription_id: str | None
    readings: int
    detail: dict[str, Any]


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    # Pass as `before` for the next (older) page; null on the last one.
    next_before: int | None


@router.get("", response_model=AuditPage)
async def read_audit(
    request: Request,
    caller: CallerDep,
    grant_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    subscription_id: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> AuditPage:
    """Who did what with whose data, newest first: an owner sees its data's, a coordinator
    its organisation's."""
    if not caller.is_coordinator and caller.service is None:
        raise forbidden("not_owner", "the audit is read by owning services and the coordinator")
    owner = None if caller.is_coordinator else caller.service
    org = caller.organisation if caller.is_coordinator else None
    if owner is None and org is None:
        raise forbidden("no_organisation", f"{caller.principal} belongs to no organisation")
    async with request.app.state.pool.connection() as conn:
        found = await audit.entries(
            conn, owner=owner, organisation=org, grant_id=grant_id, subscription_id=subscription_id,
            action=action, before=before, limit=limit,
        )  # fmt: skip
    entries = [AuditEntry.model_validate(e, from_attributes=True) for e in found]
    return AuditPage(entries=entries, next_before=found[-1].id if len(found) == limit else None)
