"""`silobreak grafana build` (dashboards as code) and `silobreak grafana roles` (governed SQL)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import click

from silobreak.cli.common import connect, settings_of
from silobreak.errors import CommandFailed
from silobreak.settings import SettingsError


@click.group()
def grafana() -> None:
    """Grafana dashboards and the database roles its datasources log in as."""


@grafana.command("build")
@click.option("--check", is_flag=True, help="Fail when the committed JSON differs from the code.")
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the dashboards go (default: grafana/dashboards of this checkout).",
)
@click.option(
    "--timezone",
    help="The city's IANA time zone (default: the shipped default city's, Europe/Paris).",
)
def grafana_build(check: bool, output: Path | None, timezone: str | None) -> None:
    """Write grafana/dashboards/<folder>/<uid>.json from grafana/*.py."""
    try:
        from grafana import build  # noqa: PLC0415 - the SDK is only needed here
    except ImportError as exc:
        raise CommandFailed(
            f"cannot build dashboards ({exc}): pip install -e '.[dev]' (grafana-foundation-sdk)"
        ) from None
    out = output or build.DASHBOARDS
    zone = timezone or build.DEFAULT_TIMEZONE
    if check:
        problems = build.check(out, timezone=zone)
        if problems:
            raise CommandFailed(
                "dashboards out of date (run `silobreak grafana build`):\n  "
                + "\n  ".join(problems)
            )
        click.echo(f"{out}: every dashboard matches its code")
        return
    for path in build.write(out, timezone=zone):
        click.echo(f"wrote {path}")


@grafana.command("roles")
@click.option(
    "--secrets-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read each role's password from DIR/<role>, creating missing ones (Grafana's "
    "provisioning reads them with $__file{...}). Without it, passwords are left as they are.",
)
@click.option("--prefix", default="grafana_", show_default=True, help="Role name prefix.")
@click.option(
    "--coordinator",
    help="With --secrets-dir: the coordinator principal the `silobreak coordinator` datasource "
    "logs in as (its role's password also goes to DIR/coordinator).",
)
@click.option(
    "--region",
    help="With --secrets-dir: the regional body's principal the `silobreak region` datasource "
    "logs in as (its role's password also goes to DIR/region).",
)
@click.pass_context
def grafana_roles(
    ctx: click.Context,
    secrets_dir: Path | None,
    prefix: str,
    coordinator: str | None,
    region: str | None,
) -> None:
    """Create or update the database role of every service, team and coordinator (idempotent)."""
    from store.sql_roles import PLATFORM_ROLE, ensure_roles, new_password, viewers  # noqa: PLC0415

    settings = settings_of(ctx)
    with connect(settings) as conn:
        passwords: dict[str, str] = {}
        if secrets_dir is not None:
            names = [prefix + p for p in viewers(conn)]
            names.append(prefix + PLATFORM_ROLE.removeprefix("grafana_"))
            passwords = _passwords(secrets_dir, names, new_password)
            for alias, principal in (("coordinator", coordinator), ("region", region)):
                if principal is not None:
                    _alias(secrets_dir / alias, passwords, prefix + principal)
        elif coordinator or region:
            raise click.UsageError("--coordinator and --region need --secrets-dir")
        changes = ensure_roles(
            conn, passwords=passwords, prefix=prefix, min_pool=settings.streams_min_pool
        )
    for change in changes:
        reads = f"reads as {change.principal}" if change.principal else "reads platform health"
        state = "created" if change.created else "updated"
        secret = ", password set" if change.password_set else ""
        click.echo(f"{change.role}: {state}, {reads}{secret}")


COMMANDS: Final[tuple[click.Command, ...]] = (grafana,)


def _alias(path: Path, passwords: dict[str, str], role: str) -> None:
    """The password of `role` under a fixed name, for a datasource whose login is configured."""
    if role not in passwords:
        raise SettingsError(f"{role} is no viewer's role (a service, team or coordinator)")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(passwords[role])


def _passwords(directory: Path, roles: list[str], make: Callable[[], str]) -> dict[str, str]:
    """Each role's password file, created (mode 0640: Grafana's group reads it) if missing."""
    directory.mkdir(parents=True, exist_ok=True)
    found = {}
    for role in roles:
        path = directory / role
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(make())
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise SettingsError(f"{path} is empty: delete it to have a password made")
        found[role] = text
    return found
