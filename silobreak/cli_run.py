"""Commands that run processes: `simulate`, `up` and `demo`."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click
import psycopg

from silobreak.cli import _db, _settings, ingest_config, main, run_async
from silobreak.settings import Settings, parse_duration

# How often `demo` prints its progress line.
_PROGRESS_EVERY_S: Final = 2.0
# A demo city small enough to run beside the ingestor on a laptop core.
_DEMO_DEVICES: Final = 200


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _fleet(scenario: Path | None, devices: int | None, seed: int | None) -> Any:
    from firmware_sim import build_fleet, default_scenario, load_scenario, scale_scenario  # noqa: PLC0415

    city = load_scenario(scenario) if scenario is not None else default_scenario()
    if devices is not None:
        city = scale_scenario(city, devices)
    return build_fleet(city, seed=seed)


def _register(settings: Settings, fleet: Any) -> int:
    from store.registry import upsert_devices  # noqa: PLC0415

    with _db(settings) as conn:
        return upsert_devices(conn, fleet.records())


@main.command()
@click.option(
    "--scenario",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="City scenario (TOML); default: the shipped mid-sized French city.",
)
@click.option("--devices", type=click.IntRange(1, 1_000_000), help="Scale the city to N devices.")
@click.option(
    "--speed",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    help="Simulated seconds per real second until the clock catches up with now.",
)
@click.option("--since", callback=_duration, help="Start this far in the past (e.g. 6h).")
@click.option("--seed", type=int, help="Seed (default: the scenario's).")
@click.option(
    "--mode",
    type=click.Choice(["per-device", "load"]),
    default="per-device",
    show_default=True,
    help="One MQTT connection per device, or a few shared ones.",
)
@click.option(
    "--connections",
    type=click.IntRange(1, 1000),
    default=4,
    show_default=True,
    help="Connections in load mode.",
)
@click.option("--duration", callback=_duration, help="Stop after this long (e.g. 10m).")
@click.option("--max-messages", type=click.IntRange(1), help="Stop after this many messages.")
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Register the fleet in the registry first (idempotent).",
)
@click.pass_context
def simulate(
    ctx: click.Context,
    scenario: Path | None,
    devices: int | None,
    speed: float,
    since: timedelta | None,
    seed: int | None,
    mode: str,
    connections: int,
    duration: timedelta | None,
    max_messages: int | None,
    register: bool,
) -> None:
    """Run a simulated city's devices against the broker (until Ctrl-C)."""
    from firmware_sim import FleetRunner  # noqa: PLC0415

    settings = _settings(ctx)
    fleet = _fleet(scenario, devices, seed)
    if register:
        new = _register(settings, fleet)
        click.echo(f"registered {len(fleet)} devices ({new} new)", err=True)
    runner = FleetRunner(
        fleet,
        url=settings.mqtt_url,
        mode="per_device" if mode == "per-device" else "load",
        connections=connections,
        speed=speed,
        start=None if since is None else datetime.now(UTC) - since,
        duration=duration,
        max_messages=max_messages,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runner.stop())
    stats = runner.run()
    click.echo(
        f"published {stats.acknowledged} of {stats.generated} messages "
        f"({stats.dropped} dropped, {stats.unsent} unsent) in {stats.wall_s:.0f} s",
        err=True,
    )


@main.command()
@click.option("--migrate/--no-migrate", default=True, show_default=True)
@click.pass_context
def up(ctx: click.Context, migrate: bool) -> None:
    """Run the platform's processes against the configured broker and database."""
    from ingest.service import Ingestor  # noqa: PLC0415
    from store.migrate import migrate as do_migrate  # noqa: PLC0415

    settings = _settings(ctx)
    if migrate:
        do_migrate(settings.database_url, backend=settings.store_backend)
    ingestor = Ingestor(ingest_config(settings))
    ingestor.metrics.serve(settings.metrics_host, settings.metrics_port)
    run_async(ingestor.run)


@main.command()
@click.option("--devices", type=click.IntRange(1, 20_000), default=_DEMO_DEVICES, show_default=True)
@click.option(
    "--speed",
    type=click.FloatRange(min=0.001),
    default=60.0,
    show_default=True,
    help="Simulated seconds per real second while catching up with now.",
)
@click.option(
    "--since",
    callback=_duration,
    default="1h",
    show_default=True,
    help="Start the simulated city this far in the past.",
)
@click.option("--seed", type=int)
@click.option("--duration", callback=_duration, help="Stop by itself after this long.")
def demo(
    devices: int, speed: float, since: timedelta, seed: int | None, duration: timedelta | None
) -> None:
    """Start a private broker and database, a simulated city and the ingestor; show progress."""
    from firmware_sim import FleetRunner  # noqa: PLC0415
    from ingest.service import Ingestor  # noqa: PLC0415
    from silobreak.local import LocalMosquitto, LocalPostgres, free_port  # noqa: PLC0415
    from store.migrate import migrate  # noqa: PLC0415

    with (
        _scratch() as root,
        LocalPostgres(root / "pg") as pg,
        LocalMosquitto(root / "mqtt") as mqtt,
    ):
        migrate(pg.url)
        settings = Settings(
            mqtt_url=mqtt.url,
            database_url=pg.url,
            ingest_client_id="demo-ingest",
            metrics_port=free_port(),
        )
        fleet = _fleet(None, devices, seed)
        _register(settings, fleet)
        click.echo(_banner(settings, len(fleet)))
        runner = FleetRunner(
            fleet,
            url=mqtt.url,
            mode="per_device",
            speed=speed,
            start=datetime.now(UTC) - since,
            duration=duration,
        )
        sim = threading.Thread(target=runner.run, name="simulator", daemon=True)
        ingestor = Ingestor(ingest_config(settings))
        ingestor.metrics.serve(settings.metrics_host, settings.metrics_port)

        async def platform(stop: asyncio.Event) -> None:
            task = asyncio.create_task(ingestor.run(stop))
            sim.start()
            await _progress(ingestor, pg.url, stop, sim)
            runner.stop()
            await asyncio.to_thread(sim.join, 30)
            stop.set()
            await task

        run_async(platform)
        click.echo("stopped: simulator, ingestor, broker and database")


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="silobreak-demo-"))
    # The database runs as the postgres user when we are root: it must reach this folder.
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


_TRY_SQL: Final = "SELECT service, device_type, count(*) FROM readings GROUP BY 1, 2"


def _banner(settings: Settings, devices: int) -> str:
    return "\n".join(
        [
            f"silobreak demo: {devices} simulated devices",
            f"  broker     {settings.mqtt_url}",
            f"  database   {settings.database_url}",
            f"  metrics    http://{settings.metrics_host}:{settings.metrics_port}/metrics",
            f"  try        psql {settings.database_url} -c '{_TRY_SQL}'",
            "  Grafana    add a PostgreSQL datasource with the database above",
            "Ctrl-C stops everything.",
        ]
    )


async def _progress(ingestor: Any, db_url: str, stop: asyncio.Event, sim: threading.Thread) -> None:
    """Print messages/s, devices online and rejects until stop (or the simulator ends)."""
    last_rows, last_t = 0.0, time.monotonic()
    while not stop.is_set() and (sim.is_alive() or not sim.ident):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _PROGRESS_EVERY_S)
        m = ingestor.metrics
        rows = m.stored._value.get()
        now = time.monotonic()
        rejects = {
            s.labels["reason"]: int(s.value)
            for metric in m.rejected.collect()
            for s in metric.samples
            if s.name.endswith("_total") and s.value
        }
        online = await asyncio.to_thread(_online, db_url)
        click.echo(
            f"{(rows - last_rows) / (now - last_t):8.0f} messages/s  {int(rows):9d} stored  "
            f"{online:5d} devices online  rejects {rejects or 'none'}"
        )
        last_rows, last_t = rows, now


def _online(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM devices WHERE connection = 'online'").fetchone()
    return int(row[0]) if row else 0
