"""`silobreak principals`: services, data teams and the coordinator; their API tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

import click

from devices.broker_auth import PRINCIPAL_KINDS, principal_username
from silobreak.cli.common import FORMATS, actor, apply_to_broker, connect, emit, settings_of
from silobreak.settings import SettingsError, parse_duration
from store.principals import (
    add_principal,
    disable_principal,
    issue_token,
    list_principals,
    list_tokens,
    revoke_token,
    rotate_broker_secret,
)


@click.group()
def principals() -> None:
    """Services, data teams, the coordinator and platform components; their API tokens."""


@principals.command("add")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(PRINCIPAL_KINDS))
@click.option("--org", help="Its organisation (needed when the platform has several).")
@click.option("--description", default="")
@click.pass_context
def principals_add(
    ctx: click.Context, name: str, kind: str, org: str | None, description: str
) -> None:
    """Create a principal and its broker account (its secret is printed once)."""
    settings = settings_of(ctx)
    with connect(settings) as conn:
        secret = add_principal(
            conn, name, kind, organisation=org, description=description, actor=actor()
        )
        apply_to_broker(settings, conn)
    click.echo(f"added {kind} {name}")
    click.echo(f"broker user: {principal_username(kind, name)}")
    click.echo(f"broker secret (shown once): {secret}")


@principals.command("list")
@click.option("--kind", type=click.Choice(PRINCIPAL_KINDS))
@click.option("--org", help="Only this organisation's.")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def principals_list(ctx: click.Context, kind: str | None, org: str | None, fmt: str) -> None:
    """List principals."""
    with connect(settings_of(ctx)) as conn:
        rows = list_principals(conn, kind=kind, organisation=org)
    header = [
        "name",
        "kind",
        "organisation",
        "broker_username",
        "live_tokens",
        "created_at",
        "disabled_at",
    ]
    emit(header, [[getattr(r, h) for h in header] for r in rows], fmt)


@principals.command("disable")
@click.argument("name")
@click.pass_context
def principals_disable(ctx: click.Context, name: str) -> None:
    """Disable a principal: tokens revoked, broker account removed."""
    settings = settings_of(ctx)
    with connect(settings) as conn:
        revoked = disable_principal(conn, name, actor=actor())
        apply_to_broker(settings, conn)
    click.echo(f"disabled {name} ({revoked} token(s) revoked)")


@principals.command("rotate-broker-secret")
@click.argument("name")
@click.pass_context
def principals_rotate(ctx: click.Context, name: str) -> None:
    """A new broker-account secret (printed once); the old one stops working."""
    settings = settings_of(ctx)
    with connect(settings) as conn:
        secret = rotate_broker_secret(conn, name, actor=actor())
        apply_to_broker(settings, conn)
    click.echo(f"new broker secret for {name} (shown once): {secret}")


@principals.group("token")
def token() -> None:
    """HTTP API bearer tokens."""


@token.command("issue")
@click.argument("principal")
@click.option("--ttl", help="Lifetime, e.g. 30d (default: SILOBREAK_TOKEN_TTL).")
@click.option("--label", default="", help="What the token is for (shown in `token list`).")
@click.pass_context
def token_issue(ctx: click.Context, principal: str, ttl: str | None, label: str) -> None:
    """Issue an API token (printed once)."""
    settings = settings_of(ctx)
    lifetime = settings.token_ttl if ttl is None else _duration(ttl, "--ttl")
    with connect(settings) as conn:
        issued = issue_token(conn, principal, ttl=lifetime, label=label, actor=actor())
    click.echo(f"token {issued.token_id} for {principal}, expires {issued.expires_at.isoformat()}")
    click.echo(f"bearer token (shown once): {issued.token}")


@token.command("revoke")
@click.argument("token_id")
@click.pass_context
def token_revoke(ctx: click.Context, token_id: str) -> None:
    """Revoke an API token by its id (tok_...)."""
    with connect(settings_of(ctx)) as conn:
        principal = revoke_token(conn, token_id, actor=actor())
    click.echo(f"revoked {token_id} of {principal}")


@token.command("list")
@click.argument("principal", required=False)
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def token_list(ctx: click.Context, principal: str | None, fmt: str) -> None:
    """List API tokens (ids and dates; tokens themselves are never stored)."""
    with connect(settings_of(ctx)) as conn:
        rows = list_tokens(conn, principal=principal)
    header = ["token_id", "principal", "label", "created_at", "expires_at", "revoked_at"]
    emit(header, [[getattr(r, h) for h in header] for r in rows], fmt)


COMMANDS: Final[tuple[click.Command, ...]] = (principals,)


def _duration(value: str, option: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise SettingsError(f"{option}: {exc}") from None
