"""`silobreak bench`: every benchmark, each measured against a baseline in the same run."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Final

import click

from silobreak.bench.suite import BENCHMARKS
from silobreak.cli.common import duration_option
from silobreak.errors import CommandFailed


@click.group(invoke_without_command=True)
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
@click.option(
    "--ha",
    is_flag=True,
    help="Against a synchronous Patroni cluster and a single PostgreSQL instead of the "
    "baseline, then a failover (starts etcd and Patroni; see docs/scaling.md).",
)
@click.option(
    "--broker",
    type=click.Choice(["mosquitto", "rabbitmq"]),
    default="mosquitto",
    show_default=True,
    help="rabbitmq: ingest through a three-node RabbitMQ cluster against one Mosquitto, "
    "alternating in the same run (throughput only; no baseline).",
)
def bench_ingest(
    messages: int,
    devices: int,
    runs: int,
    rate: float,
    latency_seconds: float,
    ingestors: int,
    no_baseline: bool,
    ha: bool,
    broker: str,
) -> None:
    """End-to-end ingest throughput and latency, against a hand-rolled baseline."""
    if ha and broker != "mosquitto":
        raise click.BadParameter("--ha runs on Mosquitto", param_hint="--broker")
    if ha:
        from silobreak.bench.ha_bench import run_ha_bench  # noqa: PLC0415

        if ingestors != 1:
            raise click.BadParameter("--ha runs one ingestor", param_hint="--ingestors")
        ha_report = run_ha_bench(
            messages=messages,
            devices=devices,
            runs=runs,
            rate=rate,
            latency_seconds=latency_seconds,
            log=lambda line: click.echo(line, err=True),
        )
        click.echo(ha_report.markdown())
        return
    if broker == "rabbitmq":
        from silobreak.bench.broker_bench import run_broker_bench  # noqa: PLC0415

        compared = run_broker_bench(
            messages=messages,
            devices=devices,
            runs=runs,
            ingestors=ingestors,
            log=lambda line: click.echo(line, err=True),
        )
        click.echo(compared.markdown(ingestors=ingestors))
        return
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


@bench.command("fanout")
@click.option("--subscriptions", type=click.IntRange(1, 100), default=50, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(100, 100_000),
    default=5000,
    show_default=True,
    help="Rows committed per second (each subscription is granted 1/N of them).",
)
@click.option("--seconds", type=click.FloatRange(1, 600), default=20, show_default=True)
@click.option("--no-baseline", is_flag=True, help="Measure silobreak only.")
def bench_fanout(subscriptions: int, rate: float, seconds: float, no_baseline: bool) -> None:
    """Live fan-out: N subscriptions over a flow, p99 latency from commit, against a baseline."""
    from silobreak.bench.fanout_bench import markdown, run_fanout_bench  # noqa: PLC0415

    results = run_fanout_bench(
        subscriptions=subscriptions, rate=rate, seconds=seconds, baseline=not no_baseline,
        log=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    click.echo(markdown(results))


@bench.command("import")
@click.option("--devices", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--runs", type=click.IntRange(1, 20), default=3, show_default=True)
def bench_import(devices: int, runs: int) -> None:
    """Bulk registry import with credentials into a fresh database, broker reloaded."""
    from silobreak.bench.import_bench import run_import_bench  # noqa: PLC0415

    report = run_import_bench(devices=devices, runs=runs, log=lambda x: click.echo(x, err=True))
    click.echo(report.markdown())


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


@bench.command("store")
@click.option("--devices", type=click.IntRange(10, 100_000), default=1000, show_default=True)
@click.option("--days", type=click.IntRange(1, 400), default=30, show_default=True)
@click.option("--interval", callback=duration_option, default="5m", show_default=True)
@click.option("--runs", type=click.IntRange(1, 100), default=7, show_default=True)
@click.option("--jobs", type=click.IntRange(1, 16), default=1, show_default=True)
def bench_store(devices: int, days: int, interval: timedelta, runs: int, jobs: int) -> None:
    """Bulk-load a simulated past, then time raw against aggregate reads of it."""
    from silobreak.bench.store_bench import run_store_bench  # noqa: PLC0415

    report = run_store_bench(
        devices=devices, days=days, interval=interval, runs=runs, jobs=jobs,
        log=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    click.echo(report.markdown())


COMMANDS: Final[tuple[click.Command, ...]] = (bench,)
