"""`silobreak orgs`: the organisations on the platform, and the streams they offer each other."""

from __future__ import annotations

import json
from typing import Any, Final

import click

from silobreak.cli.common import FORMATS, actor, connect, emit, settings_of
from store.organisations import (
    ORG_KINDS,
    add_organisation,
    list_offers,
    list_organisations,
    offer_stream,
    withdraw_offer,
)

_TERMS: Final = ("granularity", "interval", "pool", "min_devices", "delete_after_days",
                 "attribution")  # fmt: skip


@click.group()
def orgs() -> None:
    """Organisations (municipalities, regional bodies, utilities) and their stream offers."""


@orgs.command("add")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(ORG_KINDS))
@click.option("--display-name", default="", help="How people call it (Lyon, SYDEV...).")
@click.pass_context
def orgs_add(ctx: click.Context, name: str, kind: str, display_name: str) -> None:
    """Add an organisation; then add its coordinator, services and teams (`principals add
    --org NAME`) and import its devices (`devices import --org NAME`)."""
    with connect(settings_of(ctx)) as conn:
        add_organisation(conn, name, kind, display_name=display_name, actor=actor())
    click.echo(f"added {kind} {name}")


@orgs.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def orgs_list(ctx: click.Context, fmt: str) -> None:
    """List organisations with how many services, principals and devices each has."""
    with connect(settings_of(ctx)) as conn:
        rows = list_organisations(conn)
    header = ["name", "kind", "display_name", "services", "principals", "devices", "created_at"]
    emit(header, [[getattr(r, h) for h in header] for r in rows], fmt)


@orgs.command("offer")
@click.argument("service")
@click.argument("device_type")
@click.option("--metric", "metrics", multiple=True, help="Metric(s) offered; default: all.")
@click.option("--district", "districts", multiple=True, help="District(s); default: all.")
@click.option("--granularity", type=click.Choice(["raw", "aggregate"]), default="aggregate")
@click.option("--interval", help="Aggregates: the interval offered (15m, 1h).")
@click.option("--pool", type=click.Choice(["device", "district"]))
@click.option("--min-devices", type=click.IntRange(1), help="Pooled: at least this many.")
@click.option("--delete-after-days", type=click.IntRange(1, 3650), help="Obligation offered.")
@click.option("--attribution", help="Attribution the consumer must show.")
@click.pass_context
def orgs_offer(
    ctx: click.Context, /, service: str, device_type: str, metrics: tuple[str, ...],
    districts: tuple[str, ...], **terms: Any,
) -> None:  # fmt: skip
    """Let other organisations discover one of SERVICE's streams, on the terms given."""
    offered = {k: v for k, v in terms.items() if v is not None}
    with connect(settings_of(ctx)) as conn:
        offer_id = offer_stream(
            conn, service, device_type, metrics=metrics, districts=districts or None,
            terms=offered, actor=actor(),
        )  # fmt: skip
    click.echo(f"offer {offer_id}: {service} {device_type} {json.dumps(offered)}")


@orgs.command("withdraw")
@click.argument("service")
@click.argument("device_type")
@click.pass_context
def orgs_withdraw(ctx: click.Context, service: str, device_type: str) -> None:
    """Stop offering a stream (grants already made are not changed)."""
    with connect(settings_of(ctx)) as conn:
        withdraw_offer(conn, service, device_type, actor=actor())
    click.echo(f"withdrew {service} {device_type}")


@orgs.command("offers")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def orgs_offers(ctx: click.Context, fmt: str) -> None:
    """Every stream offered across organisations."""
    with connect(settings_of(ctx)) as conn:
        rows = list_offers(conn)
    header = ["id", "organisation", "service", "device_type", "metrics", "districts", "terms"]
    emit(
        header,
        [
            [r.id, r.organisation, r.service, r.device_type, " ".join(r.metrics),
             " ".join(r.districts or ()), json.dumps(r.terms)]
            for r in rows
        ],
        fmt,
    )  # fmt: skip


COMMANDS: Final[tuple[click.Command, ...]] = (orgs,)
