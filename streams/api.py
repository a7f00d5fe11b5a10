"""The HTTP API: an app factory, its database pool, error bodies, health; routes per resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Protocol

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from devices.errors import CatalogError
from store.device_catalog import adopt_recorded_catalog, catalog_version
from store.errors import first_line
from streams import devices_api
from streams.errors import ApiError
from streams.pool import Pool, new_pool

logger = logging.getLogger(__name__)

UNAVAILABLE: Final = 503
# A device type `silobreak migrate` adds reaches a running API within this long; the check
# is one single-row query.
CATALOG_POLL_S: Final = 5.0


class ApiSettings(Protocol):
    """What the API needs of the process settings (silobreak.settings.Settings has it)."""

    @property
    def database_url(self) -> str: ...


def create_app(settings: ApiSettings) -> FastAPI:
    """The FastAPI app; its connection pool opens with the app and closes with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = new_pool(settings.database_url)
        # Not waiting: the API starts while the store is down and answers 503 until it is up.
        await pool.open(wait=False)
        app.state.pool = pool
        follow = asyncio.create_task(_follow_catalog(pool), name="catalog-follow")
        try:
            yield
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follow
            await pool.close()

    app = FastAPI(
        title="silobreak",
        summary="Telemetry from a city's shared sensors, governed across its services.",
        version="1",
        lifespan=lifespan,
    )
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _malformed)  # type: ignore[arg-type]
    app.add_exception_handler(PoolTimeout, _unavailable)
    app.add_exception_handler(psycopg.OperationalError, _unavailable)
    app.include_router(devices_api.router)
    app.add_api_route("/healthz", _healthz, methods=["GET"], tags=["health"])
    return app


async def _follow_catalog(pool: Pool) -> None:
    """Adopt the catalog `silobreak migrate` records while the API runs (a type added)."""
    seen: int | None = None
    while True:
        try:
            async with pool.connection() as conn:
                version = await catalog_version(conn)
                if seen is not None and version is not None and version != seen:
                    await adopt_recorded_catalog(conn)
                seen = version if version is not None else seen
        except (psycopg.Error, PoolTimeout) as exc:
            logger.debug("device catalog check: %s", first_line(exc))
        except CatalogError as exc:
            logger.warning("device catalog not adopted: %s", exc)
        await asyncio.sleep(CATALOG_POLL_S)


async def _healthz(request: Request) -> JSONResponse:
    """200 when the store answers, else 503."""
    try:
        async with request.app.state.pool.connection() as conn:
            await conn.execute("SELECT 1")
    except (PoolTimeout, psycopg.Error) as exc:
        return _body(UNAVAILABLE, "store_unavailable", first_line(exc))
    return JSONResponse({"status": "ok"})


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return _body(exc.status, exc.reason, exc.detail, exc.headers)


async def _malformed(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return _body(422, "malformed_request", problems)


async def _unavailable(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("store unavailable: %s", first_line(exc))
    return _body(UNAVAILABLE, "store_unavailable", "the store cannot be reached; retry later")


def _body(
    status: int, reason: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        jsonable_encoder({"reason": reason, "detail": detail}), status, headers=headers
    )
