"""`/v1/flows`: for a coordinator, who reads what from whom in and out of its organisation.

The coordinator's daily view: per day and grant, the owner and the consumer with their
organisations, the purpose, how many readings left (history pages and delivery batches) and
how many requests carried them. Taken from the access audit, so it shows exactly what was
read, not what was granted.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Final, Literal, cast

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from streams.auth import CallerDep, forbidden

router = APIRouter(prefix="/v1/flows", tags=["flows"])

MAX_DAYS: Final = 366

# One definition for the API and governed SQL (store/migrations/0062_flows.sql).
_FLOWS: Final = """
SELECT "time", direction, grant_id, owner, owner_org, consumer, consumer_org, purpose,
       granularity, grant_status, readings, requests
FROM silobreak_flows(%(org)s, %(since)s, %(until)s, INTERVAL '1 day')
WHERE %(direction)s::text IS NULL OR direction = %(direction)s
ORDER BY 1 DESC, grant_id
"""


class Flow(BaseModel):
    day: date
    # out: the organisation's data read by another; in: another's read by it; internal: both.
    direction: Literal["in", "out", "internal"]
    grant_id: int
    owner: str
    owner_org: str
    consumer: str
    consumer_org: str
    purpose: str
    granularity: str
    grant_status: str
    readings: int
    requests: int


@router.get("", response_model=list[Flow])
async def list_flows(
    request: Request,
    caller: CallerDep,
    days: Annotated[int, Query(ge=1, le=MAX_DAYS, description="the last N days")] = 7,
    direction: Literal["in", "out", "internal"] | None = None,
) -> list[Flow]:
    """Readings per day and grant into, out of and within the caller's organisation."""
    if not caller.is_coordinator or caller.organisation is None:
        raise forbidden("not_coordinator", "data flows are read by an organisation's coordinator")
    org = caller.organisation
    since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since -= timedelta(days=days - 1)
    until = datetime.now(UTC) + timedelta(seconds=1)
    async with request.app.state.pool.connection() as conn:
        cur = await conn.execute(
            _FLOWS, {"org": org, "since": since, "until": until, "direction": direction}
        )
        rows = await cur.fetchall()
    return [
        Flow(
            day=at.astimezone(UTC).date(), direction=cast(Literal["in", "out", "internal"], way),
            grant_id=gid, owner=owner, owner_org=owner_org, consumer=consumer,
            consumer_org=consumer_org, purpose=purpose, granularity=gran, grant_status=status,
            readings=n, requests=k,
        )
        for at, way, gid, owner, owner_org, consumer, consumer_org, purpose, gran, status, n, k
        in rows
    ]  # fmt: skip
