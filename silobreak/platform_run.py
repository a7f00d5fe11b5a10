"""What `up` and `demo` run beside the ingestor: the health recorder, the streams API, demo access.

`demo` also gives its city what a newcomer needs to try sharing: a principal per service, a
grant (mobility's vehicle counts to the environment service), an API token to subscribe with,
and the Grafana roles, so every dashboard has data to show.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from silobreak.recorder import PlatformRecorder
from silobreak.settings import Settings, streams_config

logger = logging.getLogger(__name__)

# uvicorn answers within ~0.5 s here; a loaded CI machine may take many times that.
_API_START_S: Final = 30.0
_API_POLL_S: Final = 0.05
# The demo grant and token outlive any demo run.
_DEMO_GRANT_FOR: Final = timedelta(days=30)
_DEMO_TOKEN_FOR: Final = timedelta(days=1)
DEMO_ACTOR: Final = "demo"
DEMO_CONSUMER: Final = "environment"


def recorder(settings: Settings, ingestor: Any) -> PlatformRecorder:
    """The platform_stats recorder of one ingest process (named by its client id)."""
    return PlatformRecorder(
        settings.database_url,
        source=f"ingest:{settings.ingest_client_id}",
        registry=ingestor.metrics.registry,
    )


async def run_with_recorder(settings: Settings, ingestor: Any, stop: asyncio.Event) -> None:
    """The ingestor and its recorder until `stop`; the recorder ends with the ingestor."""
    done = asyncio.Event()
    task = asyncio.create_task(recorder(settings, ingestor).run(done), name="recorder")
    try:
        await ingestor.run(stop)
    finally:
        done.set()
        await task


class ApiServer:
    """The streams HTTP API (routes and gateway) served by uvicorn in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn  # noqa: PLC0415 - only `demo` serves the API in-process

        from streams.api import create_app  # noqa: PLC0415
        from streams.routes import include_all  # noqa: PLC0415

        app = create_app(settings)
        if not any(getattr(r, "path", "").startswith("/v1/grants") for r in app.routes):
            include_all(app, streams_config(settings))
        config = uvicorn.Config(
            app, host=settings.api_host, port=settings.api_port, log_level="warning",
            lifespan="on",
        )  # fmt: skip
        self.url = f"http://{settings.api_host}:{settings.api_port}"
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="streams-api", daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + _API_START_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the streams API did not start on {self.url}")
            time.sleep(_API_POLL_S)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(_API_START_S)


@dataclass(frozen=True, slots=True)
class DemoAccess:
    consumer: str
    token: str
    grant_id: int


def provision_demo(settings: Settings, services: list[str]) -> DemoAccess:
    """Principals for the services, a grant, a token, and the Grafana roles."""
    from store.principals import add_principal, issue_token  # noqa: PLC0415
    from store.sql_roles import ensure_roles  # noqa: PLC0415

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        for service in services:
            add_principal(conn, service, "service", actor=DEMO_ACTOR)
        grant_id = asyncio.run(_demo_grant(settings))
        token = issue_token(conn, DEMO_CONSUMER, ttl=_DEMO_TOKEN_FOR, actor=DEMO_ACTOR)
        ensure_roles(conn, min_pool=settings.streams_min_pool)
    return DemoAccess(DEMO_CONSUMER, token.token, grant_id)


async def _demo_grant(settings: Settings) -> int:
    from streams import grants  # noqa: PLC0415
    from streams.auth import Caller  # noqa: PLC0415

    spec = grants.GrantSpec(
        owner="mobility", consumer=DEMO_CONSUMER, device_types=("traffic_light",),
        metrics=("vehicle_count",), districts=None, bbox=None, granularity="raw",
        interval_s=None, pool=None, min_devices=None, purpose="demo: NO2 against traffic",
        expires_at=datetime.now(UTC) + _DEMO_GRANT_FOR,
    )  # fmt: skip
    owner = Caller("mobility", "service", DEMO_ACTOR, organisation="city")
    async with await psycopg.AsyncConnection.connect(
        settings.database_url, autocommit=True
    ) as conn:
        grant = await grants.create(conn, owner, spec, min_pool=settings.streams_min_pool)
    return grant.id


def where_to_look(settings: Settings, api: str, access: DemoAccess) -> list[str]:
    """The banner lines that say where the API, a subscription and Grafana are."""
    db = psycopg.conninfo.conninfo_to_dict(settings.database_url)
    return [
        f"  API docs   {api}/docs",
        f"  subscribe  SILOBREAK_API_URL={api} SILOBREAK_API_TOKEN={access.token} \\",
        f"             silobreak subscribe --grant {access.grant_id} --since 10m",
        (
            f"  Grafana    SILOBREAK_GRAFANA_DB={db.get('host')}:{db.get('port')} "
            f"SILOBREAK_GRAFANA_DB_NAME={db.get('dbname')} SILOBREAK_GRAFANA_SSLMODE=disable \\"
        ),
        (
            "             SILOBREAK_GRAFANA_DASHBOARDS=$PWD/grafana/dashboards "
            "GF_PATHS_PROVISIONING=$PWD/grafana/provisioning grafana server"
        ),
        (
            "             (roles grafana_<service>, e.g. grafana_"
            f"{access.consumer}: any password, this database trusts local logins; "
            "docs/grafana.md), or the whole stack: docker compose up"
        ),
    ]
