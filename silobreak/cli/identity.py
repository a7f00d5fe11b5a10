"""`silobreak devices`: register, import and list devices, and their lifecycle verbs."""

from __future__ import annotations

import contextlib
import csv
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import click

from devices.catalog import MEDIA
from devices.geojson import parse_geojson
from devices.registry import DeviceRecord, new_record, parse_csv
from silobreak.cli.common import (
    DEVICE_TYPE,
    FORMATS,
    actor,
    apply_to_broker,
    connect,
    emit,
    settings_of,
    store_catalog,
)
from silobreak.errors import CommandFailed
from silobreak.settings import SettingsError, parse_duration
from store import audit
from store.lifecycle import (
    CONNECTIONS,
    LIFECYCLES,
    DeviceFilter,
    decommission,
    erase_readings,
    find_devices,
    ownership_history,
    register_devices,
    retag_readings,
    revoke_secrets,
    rotate_secret,
    transfer,
)

_GEOJSON_SUFFIXES = (".geojson", ".json")


@click.group()
def devices() -> None:
    """Register, import and list devices."""


# -- devices: register, import, list ---------------------------------------------------------

_ORG = click.option(
    "--org", help="The organisation the devices belong to (needed when there are several)."
)


@devices.command("add")
@click.argument("device_id")
@click.option("--type", "device_type", required=True, type=DEVICE_TYPE)
@click.option("--service", help="Owning service (default: the type's usual owner).")
@click.option("--district")
@click.option("--lat", type=click.FloatRange(-90, 90))
@click.option("--lon", type=click.FloatRange(-180, 180))
@click.option("--medium", type=click.Choice(list(MEDIA)), help="Meters only.")
@_ORG
@click.pass_context
def devices_add(
    ctx: click.Context,
    device_id: str,
    device_type: str,
    service: str | None,
    district: str | None,
    lat: float | None,
    lon: float | None,
    medium: str | None,
    org: str | None,
) -> None:
    """Register one device (or update it); a new device's secret is printed once."""
    record = new_record(
        device_id, device_type, service, district=district, lat=lat, lon=lon, medium=medium
    )
    settings = settings_of(ctx)
    with connect(settings) as conn:
        done = register_devices(conn, [record], actor=actor(), organisation=org)
        apply_to_broker(settings, conn)
    click.echo(
        f"{'registered' if done.new else 'updated'} {device_id} ({device_type}, {record.service})"
    )
    if device_id in done.secrets:
        click.echo(f"secret (shown once; the device's MQTT password): {done.secrets[device_id]}")


@devices.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--secrets-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="New CSV file (device_id,secret; mode 0600) for the secrets of devices given one "
    "(default: FILE's name + .secrets-<UTC time>.csv, beside it).",
)
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "geojson"]), default="auto")
@_ORG
@click.pass_context
def devices_import(
    ctx: click.Context, file: Path, secrets_out: Path | None, fmt: str, org: str | None
) -> None:
    """Import devices from CSV or GeoJSON; all or nothing, credentials in the same step."""
    records = _parse(ctx, file, fmt)
    _import(ctx, file, records, secrets_out, org)


@devices.command("import-geojson")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--secrets-out", type=click.Path(dir_okay=False, path_type=Path),
    help="New CSV file (device_id,secret; mode 0600) for the new devices' secrets.",
)  # fmt: skip
@_ORG
@click.pass_context
def devices_import_geojson(
    ctx: click.Context, file: Path, secrets_out: Path | None, org: str | None
) -> None:
    """Import a GeoJSON FeatureCollection (Point features, registry columns as properties)."""
    _import(ctx, file, _parse(ctx, file, "geojson"), secrets_out, org)


@devices.command("list")
@click.option("--service")
@click.option("--type", "device_type", type=DEVICE_TYPE)
@click.option("--district")
@click.option("--lifecycle", type=click.Choice(LIFECYCLES))
@click.option("--connection", type=click.Choice(CONNECTIONS))
@click.option("--seen-since", help="Last seen within (15m, 2d) or since (ISO time).")
@click.option("--unseen-since", help="Not seen within (15m, 2d) or since (ISO time), or never.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def devices_list(
    ctx: click.Context,
    service: str | None,
    device_type: str | None,
    district: str | None,
    lifecycle: str | None,
    connection: str | None,
    seen_since: str | None,
    unseen_since: str | None,
    limit: int,
    fmt: str,
) -> None:
    """List registered devices, filtered."""
    where = DeviceFilter(
        service=service,
        device_type=device_type,
        district=district,
        lifecycle=lifecycle,
        connection=connection,
        seen_since=_when(seen_since, "--seen-since"),
        unseen_since=_when(unseen_since, "--unseen-since"),
        limit=limit,
    )
    with connect(settings_of(ctx)) as conn:
        rows = find_devices(conn, where)
    header = [
        "device_id", "device_type", "service", "district", "medium", "lifecycle", "connection",
        "last_seen", "credential",
    ]  # fmt: skip
    emit(header, [[getattr(r, h) for h in header] for r in rows], fmt)


# -- devices: lifecycle verbs ----------------------------------------------------------------


@devices.command("decommission")
@click.argument("device_ids", nargs=-1, required=True)
@click.option("--reason", default="", help="Recorded in the audit.")
@click.pass_context
def devices_decommission(ctx: click.Context, device_ids: tuple[str, ...], reason: str) -> None:
    """Retire devices: credentials revoked, disconnected, their data refused from now on."""
    settings = settings_of(ctx)
    with connect(settings) as conn:
        changed = decommission(conn, device_ids, actor=actor(), reason=reason)
        apply_to_broker(settings, conn)
    click.echo(f"decommissioned {changed} device(s)")


@devices.command("transfer")
@click.argument("device_id")
@click.argument("service")
@click.option("--at", "at", help="When the new owner takes over (ISO time; default now).")
@click.option(
    "--settle/--no-settle",
    default=True,
    help="Wait for ingest to reload the registry, then re-tag readings it stored meanwhile.",
)
@click.pass_context
def devices_transfer(
    ctx: click.Context, device_id: str, service: str, at: str | None, settle: bool
) -> None:
    """Hand a device to another service; readings keep the owner at their own time."""
    settings = settings_of(ctx)
    effective = _time(at, "--at") if at else None
    with connect(settings) as conn:
        done = transfer(conn, device_id, service, effective, actor=actor())
        apply_to_broker(settings, conn)
        click.echo(
            f"{device_id}: {done.old_service} -> {done.new_service} from "
            f"{done.effective_at.isoformat()} ({done.retagged} stored reading(s) re-tagged)"
        )
        if settle:
            # Ingestors tag with the registry snapshot they hold, reloaded every
            # registry_refresh: two of those (and a margin) later, all of them have this one.
            time.sleep(2 * settings.registry_refresh.total_seconds() + 1)
            device_type = find_devices(conn, DeviceFilter(device_id=device_id))[0].device_type
            with conn.transaction():
                late = retag_readings(
                    conn, device_id, device_type, service, since=done.effective_at
                )
            click.echo(f"settled: {late} reading(s) stored before ingest reloaded re-tagged")


@devices.command("erase")
@click.argument("device_id")
@click.option("--reason", required=True, help="Why (e.g. the data subject's request number).")
@click.option("--since", help="Only readings at or after this ISO time.")
@click.option("--until", help="Only readings before this ISO time.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def devices_erase(
    ctx: click.Context,
    device_id: str,
    reason: str,
    since: str | None,
    until: str | None,
    yes: bool,
) -> None:
    """Delete a device's stored readings (personal data requests); audited with the reason."""
    if not yes:
        click.confirm(f"Delete readings of {device_id} for good?", abort=True)
    with connect(settings_of(ctx)) as conn:
        readings, rejects = erase_readings(
            conn,
            device_id,
            reason=reason,
            actor=actor(),
            since=_time(since, "--since") if since else None,
            until=_time(until, "--until") if until else None,
        )
    click.echo(f"erased {readings} reading row(s) and {rejects} dead letter(s) of {device_id}")


@devices.command("rotate-secret")
@click.argument("device_id")
@click.pass_context
def devices_rotate_secret(ctx: click.Context, device_id: str) -> None:
    """Give a device a new secret (printed once); the old one stops working."""
    settings = settings_of(ctx)
    with connect(settings) as conn:
        secret = rotate_secret(conn, device_id, actor=actor())
        apply_to_broker(settings, conn)
    click.echo(f"new secret for {device_id} (shown once): {secret}")


@devices.command("revoke-secret")
@click.argument("device_ids", nargs=-1, required=True)
@click.pass_context
def devices_revoke_secret(ctx: click.Context, device_ids: tuple[str, ...]) -> None:
    """Revoke devices' secrets: disconnected and refused until `rotate-secret`."""
    settings = settings_of(ctx)
    with connect(settings) as conn:
        revoked = revoke_secrets(conn, device_ids, actor=actor())
        apply_to_broker(settings, conn)
    click.echo(f"revoked {revoked} credential(s)")


@devices.command("history")
@click.argument("device_id")
@click.pass_context
def devices_history(ctx: click.Context, device_id: str) -> None:
    """A device's owners over time and the admin actions on it."""
    with connect(settings_of(ctx)) as conn:
        owners = ownership_history(conn, device_id)
        entries = audit.entries(conn, subject=device_id)
    if not owners:
        raise CommandFailed(f"no device {device_id!r} in the registry")
    emit(["owner_from", "service"], [list(o) for o in owners], "table")
    click.echo("")
    rows = [[e.at, e.actor, e.action, e.detail] for e in reversed(entries)]
    emit(["at", "actor", "action", "detail"], rows, "table")


COMMANDS: Final[tuple[click.Command, ...]] = (devices,)


# -- helpers ---------------------------------------------------------------------------------


def _parse(ctx: click.Context, file: Path, fmt: str) -> list[DeviceRecord]:
    store_catalog(ctx)
    text = file.read_text(encoding="utf-8-sig")
    geojson = fmt == "geojson" or (fmt == "auto" and file.suffix.lower() in _GEOJSON_SUFFIXES)
    return parse_geojson(text) if geojson else parse_csv(text)


def _import(
    ctx: click.Context,
    file: Path,
    records: Sequence[DeviceRecord],
    secrets_out: Path | None,
    org: str | None,
) -> None:
    settings = settings_of(ctx)
    if secrets_out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        secrets_out = file.with_name(f"{file.name}.secrets-{stamp}.csv")
    written: list[Path] = []

    def deliver(secrets: dict[str, str]) -> None:
        if secrets:
            _write_secrets(secrets_out, secrets)
            written.append(secrets_out)

    try:
        with connect(settings) as conn:
            done = register_devices(conn, records, actor=actor(), deliver=deliver, organisation=org)
            apply_to_broker(settings, conn)
    except BaseException:
        # The registry did not commit: the secrets in the file were never valid.
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    click.echo(
        f"imported {len(records)} device(s): {done.new} new, {done.updated} updated; "
        + (
            f"{len(done.secrets)} secret(s) in {secrets_out}"
            if done.secrets
            else "no new secrets (every device already had one)"
        )
    )


def _write_secrets(path: Path, secrets: dict[str, str]) -> None:
    """A new file, 0600: refusing to overwrite keeps an earlier batch's secrets."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; name a new file for the secrets") from None
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["device_id", "secret"])
        writer.writerows(secrets.items())


def _time(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"{option}: {value!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise SettingsError(f"{option}: {value!r} needs a UTC offset (e.g. Z or +01:00)")
    return parsed


def _when(value: str | None, option: str) -> datetime | None:
    """`15m` (that long ago) or an ISO time."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        return _time(value, option)
