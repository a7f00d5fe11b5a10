"""`silobreak bench overload`: ingest publishing faster than it can store, on record."""

from __future__ import annotations

import click

from silobreak.cli import bench
from silobreak.errors import CommandFailed


@bench.command("overload")
@click.option("--seconds", type=click.FloatRange(1, 3600), default=60, show_default=True)
@click.option(
    "--publishers",
    type=click.IntRange(1, 16),
    default=3,
    show_default=True,
    help="Publisher processes, each as fast as the broker takes it.",
)
@click.option("--devices", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
@click.option(
    "--receive-maximum", type=click.IntRange(1, 65_535), default=20_000, show_default=True
)
def bench_overload(
    seconds: float, publishers: int, devices: int, batch_size: int, receive_maximum: int
) -> None:
    """Overload one ingestor: bounded memory, nothing lost, and the time to drain the backlog."""
    from silobreak.bench.overload_bench import run_overload_bench  # noqa: PLC0415

    report = run_overload_bench(
        seconds=seconds,
        publishers=publishers,
        devices=devices,
        batch_size=batch_size,
        receive_maximum=receive_maximum,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(report.markdown())
    if report.lost or report.unrouted or report.rejected:
        raise CommandFailed(
            f"{report.lost:,} message(s) lost, {report.unrouted:,} unrouted, "
            f"{report.rejected:,} dead-lettered"
        )
