"""Bearer-token authentication of API callers, as a FastAPI dependency."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Final

from fastapi import Depends, Request

from devices.broker_auth import COORDINATOR, SERVICE
from devices.credentials import looks_like_token
from store.principals import lookup_token
from streams.errors import ApiError

logger = logging.getLogger(__name__)

UNAUTHORIZED: Final = 401
FORBIDDEN: Final = 403
# RFC 6750 §3: a 401 names the scheme, and why the token was not accepted.
_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the principal a valid token belongs to."""

    principal: str
    kind: str
    token_id: str
    # The organisation the caller belongs to (every caller with a token has one).
    organisation: str | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.kind == COORDINATOR

    @property
    def service(self) -> str | None:
        """The service whose devices the caller owns, if it is a service."""
        return self.principal if self.kind == SERVICE else None


async def authenticate(request: Request) -> Caller:
    """The caller behind `Authorization: Bearer <token>`, or a 401 saying why not."""
    header = request.headers.get("authorization")
    if header is None:
        raise _refuse("missing_token", "send Authorization: Bearer <token>", challenge=False)
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not looks_like_token(token):
        raise _refuse("malformed_token", "expected Authorization: Bearer sbk_...")
    return await caller_for_token(request, token)


async def caller_for_token(request: Request, token: str) -> Caller:
    """The caller a well-formed token belongs to, or a 401 saying why not."""
    pool = request.app.state.pool
    async with pool.connection() as conn:
        record = await lookup_token(conn, token)
    if record is None:
        raise _refuse("unknown_token", "no such token")
    if record.revoked_at is not None:
        raise _refuse("revoked_token", f"token {record.token_id} was revoked")
    if record.disabled_at is not None:
        raise _refuse("principal_disabled", f"principal {record.principal} is disabled")
    if record.expires_at <= datetime.now(UTC):
        raise _refuse("expired_token", f"token {record.token_id} expired")
    return Caller(record.principal, record.kind, record.token_id, record.organisation)


CallerDep = Annotated[Caller, Depends(authenticate)]


def forbidden(reason: str, detail: str) -> ApiError:
    """A request outside the caller's rights."""
    return ApiError(FORBIDDEN, reason, detail)


def _refuse(reason: str, detail: str, *, challenge: bool = True) -> ApiError:
    headers = _CHALLENGE if challenge else {"WWW-Authenticate": "Bearer"}
    return ApiError(UNAUTHORIZED, reason, detail, dict(headers))
