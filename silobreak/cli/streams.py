"""`silobreak grants ...` and `silobreak subscribe`, over the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import IO, Any, Final, TypeVar

import click

from silobreak.cli.common import FORMATS, emit, settings_of
from silobreak.errors import CommandFailed
from silobreak.settings import Settings, SettingsError, parse_duration

T = TypeVar("T")
_GRANT_COLUMNS = ("id", "status", "owner", "owner_org", "consumer", "consumer_org",
                  "device_types", "metrics", "districts", "granularity", "interval_s", "pool",
                  "expires_at", "purpose", "awaiting")  # fmt: skip
_REGIONAL_COLUMNS = ("bucket", "level", "organisations", "district", "metric", "avg", "sum",
                     "count", "devices")  # fmt: skip
_FLOW_COLUMNS = ("day", "direction", "grant_id", "owner", "owner_org", "consumer",
                 "consumer_org", "purpose", "granularity", "readings", "requests")  # fmt: skip
_DECISIONS: Final = {
    "approve": "Approve a requested grant (the owner; across organisations, its coordinator).",
    "accept": "Accept a contract's terms (the consumer organisation's coordinator).",
    "refuse": "Refuse a requested grant (the owner, or a coordinator of either side).",
    "revoke": "Revoke a grant now (the owner, or a coordinator of either side).",
}


def _call(ctx: click.Context, token: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(client)` against SILOBREAK_API_URL; an API refusal is one line."""
    from streams.client import ClientError, StreamsClient  # noqa: PLC0415 - keeps --help fast

    settings: Settings = settings_of(ctx)
    bearer = token or settings.api_token
    if not bearer:
        raise SettingsError("no API token: pass --token or set SILOBREAK_API_TOKEN")

    async def go() -> T:
        async with StreamsClient(settings.api_url, bearer) as client:
            return await work(client)

    try:
        return asyncio.run(go())
    except ClientError as exc:
        raise CommandFailed(f"{exc.status} {exc.reason}: {exc.detail}") from None
    except OSError as exc:
        raise CommandFailed(f"API {settings.api_url} unreachable: {exc}") from None


_token = click.option("--token", help="API bearer token (default: SILOBREAK_API_TOKEN).")


@click.group()
def grants() -> None:
    """Grant, request, approve, refuse, revoke and list access to streams."""


@grants.command("list")
@_token
@click.option("--status", type=click.Choice(["requested", "active", "refused", "revoked",
                                             "expired"]))  # fmt: skip
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def grants_list(ctx: click.Context, token: str | None, status: str | None, fmt: str) -> None:
    """Grants you own or hold (all of them, for the coordinator)."""
    found = _call(ctx, token, lambda c: c.grants(status))
    emit(_GRANT_COLUMNS, [[_cell(g[k]) for k in _GRANT_COLUMNS] for g in found], fmt)


@grants.command("create")
@_token
@click.option("--owner", required=True, help="The service whose data it is (you, to grant).")
@click.option("--consumer", required=True, help="The service or team that may read.")
@click.option("--type", "device_types", multiple=True, required=True, help="Device type(s).")
@click.option("--metric", "metrics", multiple=True, help="Metric(s); default: all.")
@click.option("--district", "districts", multiple=True, help="District(s); default: all.")
@click.option("--aggregate", "interval", help="Aggregates over this interval (15m) only.")
@click.option(
    "--pool",
    type=click.Choice(["device", "district"]),
    default="device",
    show_default=True,
    help="With --aggregate: per device or pooled per district.",
)
@click.option("--min-devices", type=click.IntRange(1), help="Pooled: at least this many.")
@click.option("--purpose", required=True, help="Why (recorded with the grant).")
@click.option("--expires", required=True, help="For how long (30d) or until (ISO time).")
@click.option(
    "--delete-after-days", type=click.IntRange(1, 3650),
    help="Obligation: the consumer deletes what it received after this many days.",
)  # fmt: skip
@click.option("--attribution", help="Obligation: the attribution the consumer shows.")
@click.pass_context
def grants_create(
    ctx: click.Context, token: str | None, owner: str, consumer: str,
    device_types: tuple[str, ...], metrics: tuple[str, ...], districts: tuple[str, ...],
    interval: str | None, pool: str, min_devices: int | None, purpose: str, expires: str,
    delete_after_days: int | None, attribution: str | None,
) -> None:  # fmt: skip
    """Grant access to your service's data, or request it (as the consumer).

    Between two organisations the grant is a contract: it takes effect once the owning
    organisation's coordinator approves it and the consumer's coordinator accepts it."""
    obligations = {"delete_after_days": delete_after_days, "attribution": attribution}
    spec: dict[str, Any] = {
        "owner": owner, "consumer": consumer, "device_types": list(device_types),
        "metrics": list(metrics), "districts": list(districts) or None, "purpose": purpose,
        "expires_at": _until(expires).isoformat(),
        "granularity": "aggregate" if interval else "raw",
        "obligations": {k: v for k, v in obligations.items() if v is not None},
    }  # fmt: skip
    if interval:
        spec.update(interval=interval, pool=pool, min_devices=min_devices)
    grant = _call(ctx, token, lambda c: c.create_grant(**spec))
    click.echo(_status_line(grant))


@grants.command("odrl")
@_token
@click.argument("grant_id", type=click.IntRange(1))
@click.pass_context
def grants_odrl(ctx: click.Context, token: str | None, grant_id: int) -> None:
    """Print a grant as an ODRL 2.2 Agreement (JSON-LD)."""
    agreement = _call(ctx, token, lambda c: c.grant_odrl(grant_id))
    click.echo(json.dumps(agreement, indent=2))


@grants.command("request-odrl")
@_token
@click.argument("policy", type=click.File("rb"))
@click.pass_context
def grants_request_odrl(ctx: click.Context, token: str | None, policy: IO[bytes]) -> None:
    """Request a grant by an ODRL Offer or Request (a JSON-LD file, `-` for stdin)."""
    try:
        body = json.loads(policy.read())
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="POLICY") from None
    grant = _call(ctx, token, lambda c: c.request_odrl(body))
    click.echo(f"grant {grant['id']}: {grant['status']}")


@click.command()
@_token
@click.option("--type", "device_type", required=True, help="Device type, e.g. meter.")
@click.option("--interval", required=True, help="The grants' interval: 15m, 1h, 1d.")
@click.option("--since", default="6h", show_default=True, help="From (6h ago, or ISO time).")
@click.option("--metric", "metrics", multiple=True, help="Metric(s); default: all granted.")
@click.option(
    "--level", "levels", multiple=True, type=click.Choice(["district", "organisation", "region"]),
    help="Rows of these levels only (default: all three).",
)  # fmt: skip
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def regional(
    ctx: click.Context, token: str | None, device_type: str, interval: str, since: str,
    metrics: tuple[str, ...], levels: tuple[str, ...], fmt: str,
) -> None:  # fmt: skip
    """Aggregates pooled across your grants from several organisations: district pools,
    organisation totals and the regional total (docs/organisations.md)."""
    query = {"device_type": device_type, "interval": interval,
             "start": _since(since).isoformat(), "metric": list(metrics) or None,
             "level": list(levels) or None}  # fmt: skip
    body = _call(ctx, token, lambda c: c.regional(**query))
    if fmt == "json":
        click.echo(json.dumps(body, indent=2))
        return
    rows = [[_cell(r[k]) for k in _REGIONAL_COLUMNS] for r in body["rows"]]
    emit(_REGIONAL_COLUMNS, rows, fmt)


@click.command()
@_token
@click.option("--days", type=click.IntRange(1, 366), default=7, show_default=True)
@click.option("--direction", type=click.Choice(["in", "out", "internal"]))
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def flows(
    ctx: click.Context, token: str | None, days: int, direction: str | None, fmt: str
) -> None:
    """Who reads what from whom, in and out of your organisation (a coordinator's token)."""
    found = _call(ctx, token, lambda c: c.flows(days, direction))
    emit(_FLOW_COLUMNS, [[_cell(f[k]) for k in _FLOW_COLUMNS] for f in found], fmt)


def _decision(verb: str) -> None:
    @grants.command(verb)
    @_token
    @click.argument("grant_id", type=click.IntRange(1))
    @click.option("--note", default="", help="Why (recorded).")
    @click.pass_context
    def command(ctx: click.Context, token: str | None, grant_id: int, note: str) -> None:
        grant = _call(ctx, token, lambda c: c.decide(grant_id, verb, note))
        click.echo(_status_line(grant))

    command.__doc__ = _DECISIONS[verb]


for _verb in _DECISIONS:
    _decision(_verb)


def _status_line(grant: dict[str, Any]) -> str:
    waiting = grant.get("awaiting") or []
    more = f" (awaiting {', '.join(w.replace('_', ' ') for w in waiting)})" if waiting else ""
    return f"grant {grant['id']}: {grant['status']}{more}"


@click.command()
@_token
@click.option("--grant", "grant_id", type=click.IntRange(1), help="Subscribe within this grant.")
@click.option("--subscription", "subscription_id", help="Resume an existing SSE subscription.")
@click.option("--type", "device_types", multiple=True)
@click.option("--metric", "metrics", multiple=True)
@click.option("--district", "districts", multiple=True)
@click.option("--since", help="Replay history first: a duration back (1h) or an ISO time.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many readings.")
@click.pass_context
def subscribe(
    ctx: click.Context, token: str | None, grant_id: int | None, subscription_id: str | None,
    device_types: tuple[str, ...], metrics: tuple[str, ...], districts: tuple[str, ...],
    since: str | None, count: int | None,
) -> None:  # fmt: skip
    """Print readings of a live subscription (SSE) as JSON lines, resuming after drops."""
    if (grant_id is None) == (subscription_id is None):
        raise click.UsageError("give --grant (a new subscription) or --subscription (resume)")
    spec: dict[str, Any] = {}
    if grant_id is not None:
        spec = {"grant_id": grant_id, "device_types": list(device_types),
                "metrics": list(metrics), "districts": list(districts)}  # fmt: skip
        if since:
            spec["since"] = _since(since).isoformat()

    async def run(client: Any) -> None:
        seen = 0
        # Closed here, while the client is open: the stream ends before the connection does.
        readings = client.subscribe(subscription_id=subscription_id, **spec)
        async with contextlib.aclosing(readings):
            async for reading in readings:
                try:
                    click.echo(json.dumps(reading, default=str))
                except BrokenPipeError:
                    # The reader is gone (`| head`): end quietly, as `cat` does.
                    _stdout_to_devnull()
                    return
                seen += 1
                if count is not None and seen >= count:
                    return

    from streams.client import SubscriptionEnded  # noqa: PLC0415

    try:
        _call(ctx, token, run)
    except SubscriptionEnded as exc:
        raise CommandFailed(f"subscription ended: {exc.reason}") from None
    except KeyboardInterrupt:
        return


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


COMMANDS: Final[tuple[click.Command, ...]] = (grants, subscribe, flows, regional)


def _until(text: str) -> datetime:
    try:
        return datetime.now(UTC) + parse_duration(text)
    except ValueError:
        pass
    return _iso(text, "--expires")


def _since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        return _iso(text, "--since")


def _iso(text: str, option: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        msg = f"{text!r}: a duration (30d) or an ISO time"
        raise click.BadParameter(msg, param_hint=option) from None
    if at.tzinfo is None:
        raise click.BadParameter(f"{text!r} needs a UTC offset", param_hint=option)
    return at


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value
