"""`silobreak bench simulator`: devices driven per core by the fleet runner, against aiomqtt."""

from __future__ import annotations

import click

from silobreak.cli import bench


@bench.command("simulator")
@click.option("--devices", type=click.IntRange(1, 100_000), default=10_000, show_default=True)
@click.option(
    "--interval",
    type=click.FloatRange(1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds between two messages of one device.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(1, 3600),
    default=30.0,
    show_default=True,
    help="Measured window, after every device is connected and the warm-up.",
)
@click.option("--warmup", type=click.FloatRange(0, 600), default=10.0, show_default=True)
@click.option("--runs", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--no-baseline", is_flag=True, help="Measure the fleet runner only.")
def bench_simulator(
    devices: int, interval: float, seconds: float, warmup: float, runs: int, no_baseline: bool
) -> None:
    """Devices one core drives: the fleet runner against a plain aiomqtt fleet, same N."""
    from silobreak.bench.sim_bench import SYSTEMS, run_sim_bench  # noqa: PLC0415

    report = run_sim_bench(
        devices=devices,
        interval=interval,
        seconds=seconds,
        warmup=warmup,
        runs=runs,
        systems=SYSTEMS[:1] if no_baseline else SYSTEMS,
        log=lambda line: click.echo(line, err=True),
    )
    click.echo(report.markdown())
