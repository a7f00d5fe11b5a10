"""SensorThings callers: the API's bearer token, or HTTP basic auth with the token as the
password, for the SensorThings clients that know only basic auth (the user name is ignored)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Final

from fastapi import Depends, Request

from devices.credentials import looks_like_token
from streams.auth import UNAUTHORIZED, Caller, authenticate, caller_for_token
from streams.errors import ApiError

_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer, Basic realm="silobreak"'}


async def sta_caller(request: Request) -> Caller:
    """The caller behind `Authorization: Bearer <token>` or `Basic <user:token>`."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return await authenticate(request)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _malformed() from None
    token = decoded.partition(":")[2]
    if not looks_like_token(token):
        raise _malformed()
    return await caller_for_token(request, token)


StaCallerDep = Annotated[Caller, Depends(sta_caller)]


def _malformed() -> ApiError:
    return ApiError(
        UNAUTHORIZED, "malformed_token", "expected Basic auth with the API token as the password",
        dict(_CHALLENGE),
    )  # fmt: skip
