"""What every command module shares: settings, the database, output, errors and the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import logging
import os
import pwd
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Final, TypeVar

import click
import psycopg

from devices.catalog import DEVICE_TYPES, activate, configured_catalog
from devices.errors import DevicesError
from ingest.errors import IngestError
from silobreak.errors import SilobreakError
from silobreak.settings import Settings, load_settings, parse_duration
from store.errors import StoreError, StoreUnavailable, first_line
from streams import csvsafe

logger = logging.getLogger(__name__)
T = TypeVar("T")

FORMATS: Final = click.Choice(["table", "csv", "json"])

# Errors that mean "the user or the environment is wrong": one line, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (
    SilobreakError,
    StoreError,
    IngestError,
    DevicesError,
    OSError,
)


class ErrorTranslatingGroup(click.Group):
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


def settings_of(ctx: click.Context) -> Settings:
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


def duration_option(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> timedelta | None:
    """A click callback: `30d`, `5m` as a timedelta."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def store_catalog(ctx: click.Context) -> None:
    """Read the types the store was migrated for when it can be reached (a type added from an
    operator's catalog file is known without the file); otherwise keep the configured ones."""
    with contextlib.suppress(StoreError, psycopg.Error), connect(settings_of(ctx)):
        pass


def use_recorded_catalog(settings: Settings) -> None:
    """A platform process reads the catalog `silobreak migrate` recorded, as every other does."""
    from store.device_catalog import activate_recorded  # noqa: PLC0415

    activate_recorded(settings.database_url)


@contextmanager
def connect(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the store, its recorded catalog made active."""
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


def emit(header: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    """Print rows as an aligned table, CSV (formula-neutral cells) or JSON lines."""
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


def actor() -> str:
    """Who is at the keyboard, for the audit: `cli:<user>`."""
    try:
        return f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
    except KeyError:
        return f"cli:uid{os.getuid()}"


def apply_to_broker(settings: Settings, conn: psycopg.Connection[Any]) -> None:
    """Make the running broker enforce what the registry now says (when it runs here)."""
    if settings.broker_dir is None:
        click.echo(
            "note: broker not updated here (SILOBREAK_BROKER_DIR is not set); "
            "`silobreak broker-sync` where the broker runs applies it",
            err=True,
        )
        return
    from silobreak.broker_sync import BrokerFiles, sync_broker  # noqa: PLC0415

    click.echo(sync_broker(conn, BrokerFiles(settings.broker_dir)).describe(), err=True)


def _extra_user_errors() -> tuple[type[BaseException], ...]:
    from firmware_sim.errors import SimError  # noqa: PLC0415 - keeps `--help` fast
    from mqtt import MqttError  # noqa: PLC0415

    return (MqttError, SimError)
