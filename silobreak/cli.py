"""The `silobreak` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
import psycopg

from devices.catalog import DEVICE_TYPES, activate, active, configured_catalog
from devices.errors import DevicesError
from ingest.errors import IngestError
from silobreak.bench.suite import BENCHMARKS
from silobreak.errors import CommandFailed, SilobreakError
from silobreak.settings import Settings, load_settings
from store.errors import StoreError, StoreUnavailable, first_line
from streams import csvsafe

logger = logging.getLogger("silobreak")
T = TypeVar("T")

# Errors that mean "the user or the environment is wrong": one line, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    SilobreakError,
    StoreError,
    IngestError,
    DevicesError,
    OSError,
)


class _Group(click.Group):
    """Turns known failures into one clear line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USER_ERRORS + _extra_user_errors() as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(exc) or type(exc).__name__) from None
        except psycopg.Error as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(f"database: {first_line(exc)}") from None


def _extra_user_errors() -> tuple[type[BaseException], ...]:
    from firmware_sim.errors import SimError  # noqa: PLC0415 - keeps `--help` fast
    from mqtt import MqttError  # noqa: PLC0415

    return (MqttError, SimError)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """silobreak: telemetry from a city's shared sensors, governed across its services."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        # httpx logs every request at INFO: a line per SSE reconnect or API call would bury
        # the command's own output (`subscribe` prints readings on stdout, notes on stderr).
        for chatty in ("httpx", "httpcore"):
            logging.getLogger(chatty).setLevel(logging.WARNING)


def _settings(ctx: click.Context) -> Settings:
    """The settings, loaded once; the catalog they name (SILOBREAK_CATALOG) becomes active."""
    if "settings" not in ctx.obj:
        settings = load_settings()
        activate(configured_catalog(settings.catalog))
        ctx.obj["settings"] = settings
    loaded: Settings = ctx.obj["settings"]
    return loaded


class _DeviceTypeParam(click.ParamType[str]):
    """A device type of the configured catalog (the shipped one and SILOBREAK_CATALOG's)."""

    name = "device type"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if ctx is not None and ctx.obj is not None and value not in DEVICE_TYPES:
            store_catalog(ctx)
        if value not in DEVICE_TYPES:
            self.fail(
                f"unknown device type {value!r} (one of {', '.join(DEVICE_TYPES)})", param, ctx
            )
        return str(value)


DEVICE_TYPE = _DeviceTypeParam()


def store_catalog(ctx: click.Context) -> None:
    """Read the types the store was migrated for when it can be reached (a type added from an
    operator's catalog file is known without the file); otherwise keep the configured ones."""
    with contextlib.suppress(StoreError, psycopg.Error), _db(_settings(ctx)):
        pass


def use_recorded_catalog(settings: Settings) -> None:
    """A platform process reads the catalog `silobreak migrate` recorded, as every other does."""
    from store.device_catalog import activate_recorded  # noqa: PLC0415

    activate_recorded(settings.database_url)


@contextmanager
def _db(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(settings.database_url, autocommit=True)
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or ["cannot connect"])[0]
        raise StoreUnavailable(
            f"database unreachable ({first}); check SILOBREAK_DATABASE_URL"
        ) from None
    with conn:
        # Commands that touch the store read the types it was migrated for.
        from store.device_catalog import recorded_catalog  # noqa: PLC0415

        catalog = recorded_catalog(conn)
        if catalog is not None:
            activate(catalog)
        yield conn


def run_async(main_coro: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop with SIGINT/SIGTERM setting its stop event."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main_coro(stop)

    try:
        import uvloop  # noqa: PLC0415 - optional speed-up

        return uvloop.run(runner())
    except ImportError:
        return asyncio.run(runner())


# -- migrate -----------------------------------------------------------------------------


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the database schema (idempotent)."""
    from store.migrate import migrate as do_migrate  # noqa: PLC0415

    settings = _settings(ctx)
    applied = do_migrate(settings.database_url, backend=settings.store_backend, catalog=active())
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


# -- ingest ------------------------------------------------------------------------------


@main.command()
@click.pass_context
def ingest(ctx: click.Context) -> None:
    """Subscribe to device telemetry and store it (runs until Ctrl-C or SIGTERM)."""
    from ingest.service import Ingestor  # noqa: PLC0415
    from silobreak.platform_run import run_with_recorder  # noqa: PLC0415

    settings = _settings(ctx)
    use_recorded_catalog(settings)
    ingestor = Ingestor(ingest_config(settings))
    ingestor.metrics.serve(settings.metrics_host, settings.metrics_port, ingestor.health)
    # With the health figures the platform dashboard reads (platform_stats, every 10 s).
    run_async(lambda stop: run_with_recorder(settings, ingestor, stop))


def ingest_config(settings: Settings) -> Any:
    from ingest.service import IngestConfig  # noqa: PLC0415

    return IngestConfig(
        mqtt_url=settings.mqtt_url,
        database_url=settings.database_url,
        client_id=settings.ingest_client_id,
        share_group=settings.ingest_share_group,
        batch_size=settings.ingest_batch_size,
        batch_interval=settings.ingest_batch_interval,
        receive_maximum=settings.ingest_receive_maximum,
        session_expiry=settings.ingest_session_expiry,
        max_payload=settings.ingest_max_payload,
        max_age=settings.ingest_max_age,
        max_future=settings.ingest_max_future,
        registry_refresh=settings.registry_refresh,
        store_timeout=settings.store_timeout,
    )


# -- devices -----------------------------------------------------------------------------


@main.group()
def devices() -> None:
    """Register, import and list devices."""


# -- rejects -----------------------------------------------------------------------------


@main.group()
def rejects() -> None:
    """Read the dead-letter table."""


@rejects.command("list")
@click.option("--reason")
@click.option("--device")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@click.pass_context
def rejects_list(
    ctx: click.Context, reason: str | None, device: str | None, limit: int, fmt: str
) -> None:
    """List dead-lettered messages, newest first."""
    with _db(_settings(ctx)) as conn:
        rows = conn.execute(
            "SELECT received_at, reason, device_id, topic, detail, payload FROM rejected_messages"
            " WHERE (%(r)s::text IS NULL OR reason = %(r)s)"
            " AND (%(d)s::text IS NULL OR device_id = %(d)s)"
            " ORDER BY received_at DESC, id DESC LIMIT %(n)s",
            {"r": reason, "d": device, "n": limit},
        ).fetchall()
    header = ["received_at", "reason", "device_id", "topic", "detail", "payload"]
    out = [[*r[:5], bytes(r[5])[:120].decode("utf-8", "replace")] for r in rows]
    _emit(header, out, fmt)


# -- bench -------------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(list(BENCHMARKS)),
    help="Run this benchmark of the set (repeatable); all of them by default.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Small sizes: a few minutes to check the set runs, numbers not worth recording.",
)
@click.option(
    "--write",
    "write",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Put the report into this file (docs/benchmarks.md) between its markers.",
)
@click.pass_context
def bench(ctx: click.Context, only: tuple[str, ...], quick: bool, write: Path | None) -> None:
    """Benchmarks, each measured against a baseline in the same run.

    Without a subcommand, runs the whole set one after another (about 30 minutes at the
    documented sizes) and prints one report: a summary table and each benchmark's own.
    """
    if ctx.invoked_subcommand is not None:
        if only or quick or write:
            raise click.UsageError("--only, --quick and --write go with `silobreak bench` alone")
        return
    if quick and write:
        raise click.UsageError("--quick numbers are a smoke test; run the full set to --write")
    from silobreak.bench.suite import FULL, QUICK, run_suite, write_into  # noqa: PLC0415

    report = run_suite(
        profile=QUICK if quick else FULL, only=only, log=lambda line: click.echo(line, err=True)
    )
    text = report.markdown()
    click.echo(text)
    if write is not None:
        write_into(write, text)
        click.echo(f"wrote the report into {write}", err=True)
    if report.failed:
        raise CommandFailed("; ".join(report.failed))


@bench.command("ingest")
@click.option(
    "--messages", type=click.IntRange(1000, 10_000_000), default=200_000, show_default=True
)
@click.option("--devices", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--runs", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(1, 1_000_000),
    default=5000,
    show_default=True,
    help="Fixed publish rate of the latency run (messages/s).",
)
@click.option("--latency-seconds", type=click.FloatRange(0, 600), default=10, show_default=True)
@click.option("--ingestors", type=click.IntRange(1, 8), default=1, show_default=True)
@click.option("--no-baseline", is_flag=True, help="Measure silobreak only.")
def bench_ingest(
    messages: int,
    devices: int,
    runs: int,
    rate: float,
    latency_seconds: float,
    ingestors: int,
    no_baseline: bool,
) -> None:
    """End-to-end ingest throughput and latency, against a hand-rolled baseline."""
    from silobreak.bench.ingest_bench import run_ingest_bench  # noqa: PLC0415

    report = run_ingest_bench(
        messages=messages,
        devices=devices,
        runs=runs,
        rate=rate,
        latency_seconds=latency_seconds,
        ingestors=ingestors,
        baseline=not no_baseline,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(report.markdown(ingestors=ingestors))


# -- docs --------------------------------------------------------------------------------


@main.group()
def docs() -> None:
    """Generated documentation."""


@docs.command("devices")
@click.option("--check", is_flag=True, help="Fail when the file differs from the catalog.")
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/devices.md")
)
def docs_devices(check: bool, output: Path) -> None:
    """Write docs/devices.md from the device catalog."""
    from devices.docs import render  # noqa: PLC0415

    text = render()
    if check:
        if not output.is_file() or output.read_text(encoding="utf-8") != text:
            raise CommandFailed(f"{output} is out of date: run `silobreak docs devices`")
        click.echo(f"{output} matches the catalog")
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


def _emit(header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(dict(zip(header, row, strict=True)), default=str))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(header)
        writer.writerows(["" if v is None else csvsafe.neutral(v) for v in row] for row in rows)
        return
    text = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for r in text:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


# Commands defined in their own modules register themselves on `main` when imported.
from silobreak import (  # noqa: E402, F401
    cli_bench_faults,
    cli_bench_sim,
    cli_grafana,
    cli_identity,
    cli_rejects,
    cli_run,
    cli_store,
    cli_streams,
)
