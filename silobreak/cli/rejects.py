"""`silobreak rejects list|stats|replay|expire`: read, count, replay and expire dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import click

from ingest.decode import REASONS
from silobreak.cli.common import FORMATS, connect, emit, run_async, settings_of
from silobreak.errors import CommandFailed
from silobreak.settings import parse_duration
from store.rejects import RejectFilter


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 time with an offset, or a duration back from now (`2h`, `7d`)."""
    if value is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (2h, 7d) nor ISO 8601 (2026-11-26T06:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs a UTC offset, e.g. 2026-11-26T06:00:00Z")
    return moment


def _filters(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option(
        "--since", callback=_since, help="Received since: ISO 8601, or a duration ago (2h)."
    )(f)
    f = click.option("--device", help="Only this device.")(f)
    return click.option("--reason", type=click.Choice(REASONS), help="Only this reason.")(f)


@click.group()
def rejects() -> None:
    """Read the dead-letter table."""


@rejects.command("list")
@click.option("--reason")
@click.option("--device")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def rejects_list(
    ctx: click.Context, reason: str | None, device: str | None, limit: int, fmt: str
) -> None:
    """List dead-lettered messages, newest first."""
    from store.rejects import newest_rejects  # noqa: PLC0415

    with connect(settings_of(ctx)) as conn:
        found = newest_rejects(conn, RejectFilter(reason, device), limit=limit)
    header = ["received_at", "reason", "device_id", "topic", "detail", "payload"]
    rows = [
        [r.received_at, r.reason, r.device_id, r.topic, r.detail,
         r.payload[:120].decode("utf-8", "replace")]
        for r in found
    ]  # fmt: skip
    emit(header, rows, fmt)


@rejects.command("stats")
@_filters
@click.option(
    "--by",
    type=click.Choice(["device", "reason"]),
    default="device",
    show_default=True,
    help="Count per reason and device, or per reason alone.",
)
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def rejects_stats(
    ctx: click.Context,
    reason: str | None,
    device: str | None,
    since: datetime | None,
    by: str,
    fmt: str,
) -> None:
    """Count dead letters by reason and device, the most frequent first."""
    from store.rejects import reject_stats  # noqa: PLC0415

    where = RejectFilter(reason, device, since)
    with connect(settings_of(ctx)) as conn:
        counts = reject_stats(conn, where, by_device=by == "device")
    header = ["reason", "device_id", "count", "first_received", "last_received"]
    rows = [[c.reason, c.device_id, c.count, c.first, c.last] for c in counts]
    if by == "reason":
        header.remove("device_id")
        rows = [[r[0], *r[2:]] for r in rows]
    emit(header, rows, fmt)


@rejects.command("replay")
@_filters
@click.pass_context
def rejects_replay(
    ctx: click.Context, reason: str | None, device: str | None, since: datetime | None
) -> None:
    """Decode dead letters again against today's registry; store those that now validate.

    Run it after a fix (a device registered late, a firmware bug's messages made valid by a
    catalog change). Each message keeps the reading-time window of its arrival. What is
    stored leaves the dead-letter table in the same transaction; what still fails stays,
    with the reason it fails for now (store_refused, with the database's error, for what
    the database still refuses: the rest of its batch is stored).

    Exits 1, saying how many, when any replayed message still fails; 0 when every one was
    stored (status messages, which are not telemetry, are skipped and do not count).
    """
    from silobreak.replay import ReplayLimits, replay_rejects  # noqa: PLC0415

    settings = settings_of(ctx)
    limits = ReplayLimits(
        max_payload=settings.ingest_max_payload,
        max_age=settings.ingest_max_age,
        max_future=settings.ingest_max_future,
    )
    result = run_async(
        lambda stop: replay_rejects(
            settings.database_url,
            RejectFilter(reason, device, since),
            limits=limits,
            stop=stop,
            insert_mode=settings.store_insert_mode,
            store_timeout=settings.store_timeout,
        )
    )
    click.echo(result.summary())
    failing = sum(result.still_failing.values())
    if failing:
        raise CommandFailed(
            f"{failing} replayed dead letter(s) still fail; they stay, with the reason they fail"
            " for now (`silobreak rejects stats --by reason`)"
        )


@rejects.command("expire")
@click.option(
    "--older-than",
    "older_than",
    help="Delete dead letters older than this (default: SILOBREAK_REJECTS_RETENTION).",
)
@click.pass_context
def rejects_expire(ctx: click.Context, older_than: str | None) -> None:
    """Delete dead letters past their retention period."""
    from store.rejects import expire_rejects  # noqa: PLC0415

    settings = settings_of(ctx)
    try:
        age = parse_duration(older_than) if older_than else settings.rejects_retention
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    if age <= timedelta(0):
        raise click.BadParameter("must be longer than 0", param_hint="--older-than")
    cutoff = datetime.now(UTC) - age
    with connect(settings) as conn:
        deleted = expire_rejects(conn, cutoff)
    click.echo(f"deleted {deleted} dead letter(s) received before {cutoff.isoformat()}")


COMMANDS: Final[tuple[click.Command, ...]] = (rejects,)
