"""Mount the streams routers (catalog, grants, subscriptions, history, audit, flows,
SensorThings) and the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from streams import (
    routes_audit,
    routes_catalog,
    routes_flows,
    routes_grants,
    routes_history,
    routes_regional,
    routes_subscriptions,
)
from streams.gateway import Gateway, StreamsConfig
from streams.sta import routes as sta_routes


def include_all(app: FastAPI, config: StreamsConfig) -> None:
    """Add the routers to `app`, and run a streams gateway for as long as the app runs."""
    for module in (routes_catalog, routes_grants, routes_subscriptions, routes_history,
                   routes_audit, routes_flows, routes_regional, sta_routes):  # fmt: skip
        app.include_router(module.router)
    outer = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: FastAPI) -> AsyncIterator[Any]:
        async with outer(a) as state:
            # The feeds' pages share the API's pool (streams.api.create_app opens it).
            gateway = Gateway(config, pool=getattr(a.state, "pool", None))
            await gateway.start()
            a.state.streams = gateway
            try:
                yield state
            finally:
                await gateway.stop()

    app.router.lifespan_context = lifespan
