"""Commands that run processes: `ingest`, `streams`, `simulate`, `up` and `demo`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

from devices.catalog import active
from mqtt import BadMqttUrl, MqttUrl, ProtocolVersion
from silobreak.cli.common import (
    actor,
    apply_to_broker,
    connect,
    duration_option,
    run_async,
    settings_of,
    use_recorded_catalog,
)
from silobreak.errors import CommandFailed
from silobreak.settings import (
    Settings,
    SettingsError,
    ingest_config,
    streams_config,
)
from silobreak.sim_credentials import DEFAULT_SECRETS_FILE
from store.schema import TRY_QUERY

# How often `demo` prints its progress line.
_PROGRESS_EVERY_S: Final = 2.0
# A demo city small enough to run beside the ingestor on a laptop core.
_DEMO_DEVICES: Final = 200


@click.command()
@click.pass_context
def ingest(ctx: click.Context) -> None:
    """Subscribe to device telemetry and store it (runs until Ctrl-C or SIGTERM)."""
    from ingest.service import Ingestor  # noqa: PLC0415
    from silobreak.platform_run import run_with_recorder  # noqa: PLC0415

    settings = settings_of(ctx)
    use_recorded_catalog(settings)
    ingestor = Ingestor(ingest_config(settings))
    ingestor.metrics.serve(settings.metrics_host, settings.metrics_port, ingestor.health)
    # With the health figures the platform dashboard reads (platform_stats, every 10 s).
    run_async(lambda stop: run_with_recorder(settings, ingestor, stop))


@click.command("streams")
@click.pass_context
def streams(ctx: click.Context) -> None:
    """Serve the HTTP API (/v1/..., OpenAPI at /docs) until Ctrl-C or SIGTERM."""
    import uvicorn  # noqa: PLC0415 - keeps `--help` fast

    from streams.api import create_app  # noqa: PLC0415
    from streams.routes import include_all  # noqa: PLC0415

    settings = settings_of(ctx)
    use_recorded_catalog(settings)
    app = create_app(settings)
    # grants, subscriptions, history, audit and the live gateway
    include_all(app, streams_config(settings))
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="info")


def _fleet(scenario: Path | None, devices: int | None, seed: int | None) -> Any:
    from firmware_sim import build_fleet, default_scenario, load_scenario, scale_scenario  # noqa: PLC0415

    city = load_scenario(scenario) if scenario is not None else default_scenario()
    if devices is not None:
        city = scale_scenario(city, devices)
    return build_fleet(city, seed=seed)


def _register(settings: Settings, fleet: Any) -> int:
    from store.registry import upsert_devices  # noqa: PLC0415

    with connect(settings) as conn:
        return upsert_devices(conn, fleet.records())


@click.command()
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
@click.option("--since", callback=duration_option, help="Start this far in the past (e.g. 6h).")
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
@click.option("--duration", callback=duration_option, help="Stop after this long (e.g. 10m).")
@click.option("--max-messages", type=click.IntRange(1), help="Stop after this many messages.")
@click.option(
    "--mqtt-version",
    type=click.Choice(["5", "3.1.1"]),
    help="The devices' MQTT version [default: the broker URL's ?protocol=, else 5]. "
    "5: telemetry the broker routed to no subscriber (0x10) is kept and sent again; "
    "3.1.1: it is lost.",
)
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Register the fleet's missing devices, giving active ones without one a secret "
    "(idempotent; decommissioned devices stay so and are left out).",
)
@click.option(
    "--secrets-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_SECRETS_FILE,
    show_default=True,
    help="The fleet's device secrets (device_id,secret; 0600), kept by the simulator.",
)
@click.option(
    "--progress",
    callback=duration_option,
    default="10s",
    show_default=True,
    help="Print a progress line this often (0s: never).",
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
    mqtt_version: str | None,
    register: bool,
    secrets_file: Path,
    progress: timedelta,
) -> None:
    """Run a simulated city's devices against the broker (until Ctrl-C)."""
    from firmware_sim import FleetRunner  # noqa: PLC0415

    settings = settings_of(ctx)
    version = _devices_version(settings.mqtt_url, mqtt_version)
    fleet = _fleet(scenario, devices, seed)
    _check_since(settings, fleet, since, speed)
    per_device = mode == "per-device"
    passwords, left_out = _credentials(
        settings, fleet, secrets_file, register=register, probe=per_device
    )
    runner = FleetRunner(
        fleet,
        url=settings.mqtt_url,
        mode="per_device" if per_device else "load",
        connections=connections,
        passwords=passwords or None,
        speed=speed,
        start=None if since is None else datetime.now(UTC) - since,
        duration=duration,
        max_messages=max_messages,
        mqtt_version=version,
        leave_out=left_out,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: runner.stop())
    running = len(fleet) - len(left_out)
    links = running if per_device else min(connections, running)
    finished = threading.Event()
    if progress > timedelta(0):
        reporter = threading.Thread(
            target=_report_progress,
            args=(runner, progress.total_seconds(), links, finished),
            name="progress",
            daemon=True,
        )
        reporter.start()
    try:
        stats = runner.run()
    finally:
        finished.set()
    simulated = ""
    if stats.sim_start is not None:
        end = stats.sim_end or stats.sim_start
        simulated = f"; simulated {_iso(stats.sim_start)} to {_iso(end)}"
    click.echo(
        f"published {stats.acknowledged} of {stats.generated} messages "
        f"({stats.refused} refused by the broker, {stats.dropped} dropped, {stats.unsent} unsent, "
        f"{stats.buffered} buffered while offline) in {stats.wall_s:.0f} s{simulated}",
        err=True,
    )


def _report_progress(runner: Any, every: float, links: int, finished: threading.Event) -> None:
    while not finished.wait(every):
        p = runner.progress()
        at = _iso(p.sim_end) if p.sim_end is not None else "start"
        click.echo(
            f"at {at}: {p.acknowledged} published, {p.refused} refused, "
            f"{p.online}/{links} connected, {p.unsent} waiting, "
            f"{p.buffered} buffered while offline, {p.dropped} dropped",
            err=True,
        )


def _devices_version(url: str, asked: str | None) -> ProtocolVersion:
    """The simulated devices' MQTT version: `--mqtt-version` if given, else the broker URL's
    `?protocol=` (5 without one). A URL that says 3.1.1 names a broker that speaks only that."""
    try:
        broker = MqttUrl.parse(url)
    except BadMqttUrl as exc:
        raise click.BadParameter(str(exc), param_hint="SILOBREAK_MQTT_URL") from None
    if asked is None:
        return broker.protocol
    if asked == "5" and not broker.v5:
        raise click.UsageError(
            "--mqtt-version 5 disagrees with the broker URL's ?protocol=3.1.1; leave one out"
        )
    return "5" if asked == "5" else "3.1.1"


def _check_since(settings: Settings, fleet: Any, since: timedelta | None, speed: float) -> None:
    """Refuse a start so far back that ingest would reject the first readings as too old."""
    if since is None:
        if speed != 1.0:
            note = "note: --speed has no effect without --since (the clock never runs ahead of now)"
            click.echo(note, err=True)
        return
    # A device whose clock lags by up to clock_skew_max_s stamps its readings that much older.
    skew = timedelta(seconds=fleet.scenario.faults.clock_skew_max_s)
    if since + skew >= settings.ingest_max_age:
        raise SettingsError(
            f"--since {_span(since)}: readings that old are outside ingest's window "
            f"(SILOBREAK_INGEST_MAX_AGE = {_span(settings.ingest_max_age)}, less the fleet's "
            f"clock skew of up to {skew.total_seconds():g} s) and would be rejected as "
            "timestamp_out_of_range; start later"
        )


def _credentials(
    settings: Settings, fleet: Any, secrets_file: Path, *, register: bool, probe: bool
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Register the fleet's missing devices with credentials (or read the secrets file); wait
    for the broker. Returns the devices' passwords and the decommissioned devices to leave out.
    """
    from silobreak.sim_credentials import provision, read_secrets, wait_for_broker  # noqa: PLC0415

    if not register:
        return read_secrets(secrets_file), ()
    with connect(settings) as conn:
        done = provision(conn, fleet.records(), secrets_file=secrets_file, actor=actor())
        registered_at = time.monotonic()
        apply_to_broker(settings, conn)
    click.echo(
        f"registered {len(fleet)} devices ({done.new_devices} new); {len(done.changed)} "
        f"new secret(s) ({done.replaced} replacing ones this simulator did not hold), "
        f"kept in {secrets_file}",
        err=True,
    )
    if done.decommissioned:
        click.echo(
            f"left out {len(done.decommissioned)} decommissioned device(s): not re-activated "
            "(`silobreak devices add` or `import` brings one back)",
            err=True,
        )
    if not done.passwords:
        raise CommandFailed("every device of the fleet is decommissioned: nothing to run")
    if probe:
        # A device whose secret just changed is refused until the broker reloads its files.
        device_id = done.changed[0] if done.changed else next(iter(done.passwords))
        waited = wait_for_broker(settings.mqtt_url, device_id, done.passwords[device_id])
        if done.changed:
            click.echo(f"the broker accepts the new secrets (after {waited:.1f} s)", err=True)
    if done.activated:
        # Ingestors reload the registry every registry_refresh: two of those (and a margin)
        # later all of them accept the new devices, as `devices transfer` waits too.
        settle = 2 * settings.registry_refresh.total_seconds() + 1.0
        left = registered_at + settle - time.monotonic()
        if left > 0:
            click.echo(f"waiting {left:.1f} s for ingest to load the new devices", err=True)
            time.sleep(left)
    return done.passwords, done.decommissioned


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _span(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.command()
@click.option("--migrate/--no-migrate", default=True, show_default=True)
@click.pass_context
def up(ctx: click.Context, migrate: bool) -> None:
    """Run ingest, its health recorder and the store's upkeep (rollups, retention, mirror).

    The HTTP API and live delivery run in `silobreak streams`, scaled on their own.
    """
    from ingest.service import Ingestor  # noqa: PLC0415
    from silobreak.platform_run import run_with_recorder  # noqa: PLC0415
    from silobreak.upkeep import run_upkeep  # noqa: PLC0415
    from store.migrate import migrate as do_migrate  # noqa: PLC0415

    settings = settings_of(ctx)
    if migrate:
        do_migrate(settings.database_url, backend=settings.store_backend, catalog=active())
    use_recorded_catalog(settings)
    ingestor = Ingestor(ingest_config(settings))
    ingestor.metrics.serve(settings.metrics_host, settings.metrics_port, ingestor.health)

    async def platform(stop: asyncio.Event) -> None:
        # The ingestor with the health figures the platform dashboard reads (platform_stats,
        # every 10 s), and the store's upkeep: rollups, retention and the InfluxDB mirror.
        await asyncio.gather(
            run_with_recorder(settings, ingestor, stop), run_upkeep(settings, stop)
        )

    run_async(platform)


@click.command()
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
    callback=duration_option,
    default="1h",
    show_default=True,
    help="Start the simulated city this far in the past.",
)
@click.option("--seed", type=int)
@click.option("--duration", callback=duration_option, help="Stop by itself after this long.")
def demo(
    devices: int, speed: float, since: timedelta, seed: int | None, duration: timedelta | None
) -> None:
    """Start a private broker and database, a simulated city and the ingestor; show progress."""
    from firmware_sim import FleetRunner  # noqa: PLC0415
    from ingest.service import Ingestor  # noqa: PLC0415
    from silobreak import region_demo  # noqa: PLC0415
    from silobreak.local import LocalMosquitto, LocalPostgres, free_port  # noqa: PLC0415
    from silobreak.platform_run import (  # noqa: PLC0415
        ApiServer,
        provision_demo,
        run_with_recorder,
        where_to_look,
    )
    from store.migrate import migrate  # noqa: PLC0415

    with (
        _scratch() as root,
        LocalPostgres(root / "pg") as pg,
        LocalMosquitto(root / "mqtt") as mqtt,
    ):
        with _quiet("store.migrate"):
            applied = migrate(pg.url)
        click.echo(f"migrated: {len(applied)} migrations applied")
        settings = Settings(
            mqtt_url=mqtt.url,
            database_url=pg.url,
            ingest_client_id="demo-ingest",
            metrics_port=free_port(),
            api_port=free_port(),
        )
        fleet = _fleet(None, devices, seed)
        _register(settings, fleet)
        access = provision_demo(settings, sorted({r.service for r in fleet.records()}))
        # The neighbouring communes and the regional syndicate (docs/organisations.md).
        communes = region_demo.commune_fleets()
        region = region_demo.provision_region(settings, communes)
        api = ApiServer(settings)
        api.start()
        click.echo(_banner(settings, len(fleet) + sum(len(f) for _, f in communes)))
        click.echo("\n".join(where_to_look(settings, api.url, access)))
        click.echo("\n".join(region_demo.where_to_look(api.url, region)))
        click.echo("Ctrl-C stops everything.")
        runners = [
            FleetRunner(
                f,
                url=mqtt.url,
                mode="per_device",
                speed=speed,
                start=datetime.now(UTC) - since,
                duration=duration,
                # On MQTT 5 telemetry is held and sent again until ingest has subscribed.
                mqtt_version=_devices_version(mqtt.url, None),
            )
            for f in (fleet, *(f for _, f in communes))
        ]
        runner = runners[0]
        sim = threading.Thread(target=runner.run, name="simulator", daemon=True)
        neighbours = [
            threading.Thread(target=r.run, name=f"simulator-{org}", daemon=True)
            for r, (org, _) in zip(runners[1:], communes, strict=True)
        ]
        ingestor = Ingestor(ingest_config(settings))
        ingestor.metrics.serve(settings.metrics_host, settings.metrics_port, ingestor.health)

        async def platform(stop: asyncio.Event) -> None:
            task = asyncio.create_task(run_with_recorder(settings, ingestor, stop))
            sim.start()
            for thread in neighbours:
                thread.start()
            await _progress(ingestor, pg.url, stop, sim)
            for r in runners:
                r.stop()
            for thread in (sim, *neighbours):
                await asyncio.to_thread(thread.join, 30)
            stop.set()
            await task

        try:
            run_async(platform)
        finally:
            api.stop()
        click.echo("stopped: simulator, ingestor, streams API, broker and database")


COMMANDS: Final[tuple[click.Command, ...]] = (ingest, streams, simulate, up, demo)


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="silobreak-demo-"))
    # The database runs as the postgres user when we are root: it must reach this folder.
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _banner(settings: Settings, devices: int) -> str:
    return "\n".join(
        [
            f"silobreak demo: {devices} simulated devices",
            f"  broker     {settings.mqtt_url}",
            f"  database   {settings.database_url}",
            f"  metrics    http://{settings.metrics_host}:{settings.metrics_port}/metrics",
            f"  try        psql {settings.database_url} -c '{TRY_QUERY}'",
        ]
    )


async def _progress(ingestor: Any, db_url: str, stop: asyncio.Event, sim: threading.Thread) -> None:
    """Print messages/s, devices online and rejects until stop (or the simulator ends)."""
    last_rows, last_t = 0.0, time.monotonic()
    while not stop.is_set() and (sim.is_alive() or not sim.ident):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _PROGRESS_EVERY_S)
        m = ingestor.metrics
        rows = m.registry.get_sample_value("silobreak_ingest_stored_total") or 0.0
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
            f"{online:5d} devices online  rejects {rejects_text(rejects)}"
        )
        last_rows, last_t = rows, now


def rejects_text(counts: dict[str, int]) -> str:
    """`malformed_payload 8, schema_violation 5`: the most frequent reason first; `none`."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{reason} {n}" for reason, n in ranked) or "none"


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Hold back a logger's INFO lines (the demo says in one line what they would say)."""
    chatty = logging.getLogger(name)
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        yield
    finally:
        chatty.setLevel(level)


def _online(db_url: str) -> int:
    from store.registry import count_online  # noqa: PLC0415

    with psycopg.connect(db_url) as conn:
        return count_online(conn)
