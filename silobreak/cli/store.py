"""Store commands: `migrate`, `maintain`, `retention`, `backfill`, `query`, `mirror` and
`ha-config`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import click

from devices.catalog import active
from silobreak.cli.common import (
    DEVICE_TYPE,
    FORMATS,
    connect,
    duration_option,
    emit,
    run_async,
    settings_of,
    use_recorded_catalog,
)

# Rows `query raw` prints unless told otherwise.
_QUERY_LIMIT: Final = 1000


def _moment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not ISO 8601 (2026-11-26T06:00:00Z)") from None
    if moment.tzinfo is None:
        raise click.BadParameter(f"{value!r} needs a UTC offset, e.g. 2026-11-26T06:00:00Z")
    return moment


# -- migrate -----------------------------------------------------------------------------


@click.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the database schema (idempotent)."""
    from store.migrate import migrate as do_migrate  # noqa: PLC0415

    settings = settings_of(ctx)
    applied = do_migrate(settings.database_url, backend=settings.store_backend, catalog=active())
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


# -- maintain ----------------------------------------------------------------------------


@click.command()
@click.option(
    "--watch", is_flag=True, help="Run every SILOBREAK_MAINTENANCE_INTERVAL until Ctrl-C."
)
@click.option("--retention/--no-retention", default=True, show_default=True)
@click.pass_context
def maintain(ctx: click.Context, watch: bool, retention: bool) -> None:
    """Refresh aggregates, compress, apply retention (plain: rollups; TimescaleDB: its jobs)."""
    from silobreak.upkeep import maintain_once, maintenance_loop  # noqa: PLC0415

    settings = settings_of(ctx)
    use_recorded_catalog(settings)
    if not watch:
        click.echo(maintain_once(settings, retention=retention))
        return
    run_async(lambda stop: maintenance_loop(settings, stop))


# -- retention ---------------------------------------------------------------------------


@click.group()
def retention() -> None:
    """Per-service retention: how long each owning service's data is kept."""


@retention.command("set")
@click.argument("service")
@click.argument("keep", callback=duration_option)
@click.option("--aggregates", callback=duration_option, help="Keep aggregates longer (e.g. 1825d).")
@click.pass_context
def retention_set(
    ctx: click.Context, service: str, keep: timedelta, aggregates: timedelta | None
) -> None:
    """Keep SERVICE's readings for KEEP (e.g. 400d); older ones go at the next maintenance."""
    from store.maintain import set_policy  # noqa: PLC0415

    with connect(settings_of(ctx)) as conn:
        policy = set_policy(conn, service, keep, aggregates)
    click.echo(
        f"{service}: readings kept {policy.keep.days}d, aggregates {policy.keep_aggregates.days}d"
    )


@retention.command("clear")
@click.argument("service")
@click.pass_context
def retention_clear(ctx: click.Context, service: str) -> None:
    """Keep SERVICE's data for ever again."""
    from store.maintain import clear_policy  # noqa: PLC0415

    with connect(settings_of(ctx)) as conn:
        had = clear_policy(conn, service)
    click.echo(f"{service}: kept for ever" if had else f"{service} had no retention policy")


@retention.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def retention_list(ctx: click.Context, fmt: str) -> None:
    """Every service's policy (services not listed keep their data)."""
    from store.maintain import policies  # noqa: PLC0415

    with connect(settings_of(ctx)) as conn:
        rows = [
            [p.service, f"{p.keep.days}d", f"{p.keep_aggregates.days}d"] for p in policies(conn)
        ]
    emit(["service", "readings", "aggregates"], rows, fmt)


@retention.command("log")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def retention_log(ctx: click.Context, limit: int, fmt: str) -> None:
    """What retention removed, newest first."""
    from store.maintain import recent_retention  # noqa: PLC0415

    with connect(settings_of(ctx)) as conn:
        actions = recent_retention(conn, limit)
    rows = [
        [a.at, a.relation, a.part_name, a.action, ",".join(a.services), a.rows] for a in actions
    ]
    emit(["at", "relation", "partition", "action", "services", "rows"], rows, fmt)


# -- backfill ----------------------------------------------------------------------------


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--simulate",
    "period",
    callback=duration_option,
    help="Instead of a file: simulate this much of the past (e.g. 30d).",
)
@click.option("--devices", type=click.IntRange(1, 1_000_000), help="Simulated city size.")
@click.option(
    "--interval", callback=duration_option, help="Every simulated device publishes this often."
)
@click.option("--scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seed", type=int)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes simulating slices of the period in parallel.",
)
@click.pass_context
def backfill(
    ctx: click.Context,
    file: Path | None,
    period: timedelta | None,
    devices: int | None,
    interval: timedelta | None,
    scenario: Path | None,
    seed: int | None,
    jobs: int,
) -> None:
    """Load history (a CSV FILE, or --simulate a past period) straight into the store.

    CSV columns by header: time,device_id,metric,value (narrow) or time,device_id,<metrics>
    (wide). Validated as ingest validates; loading twice stores nothing twice.
    """
    from silobreak.backfill import (  # noqa: PLC0415
        SimulatedCity,
        backfill_simulated,
        csv_messages,
    )
    from silobreak.backfill import backfill as load  # noqa: PLC0415

    settings = settings_of(ctx)
    if (file is None) == (period is None):
        raise click.UsageError("give either FILE or --simulate PERIOD")
    use_recorded_catalog(settings)
    if file is not None:
        report = load(
            settings.database_url,
            csv_messages(file),
            batch_size=settings.backfill_batch_size,
            insert_mode=settings.store_insert_mode,
            max_future=settings.ingest_max_future,
        )
    else:
        assert period is not None
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        city = SimulatedCity(scenario, devices, seed, interval)
        report = backfill_simulated(
            settings.database_url, city, end - period, end, jobs=jobs,
            batch_size=settings.backfill_batch_size, insert_mode=settings.store_insert_mode,
        )  # fmt: skip
    rejected = ", ".join(f"{r} {n}" for r, n in sorted(report.rejected.items())) or "none"
    click.echo(
        f"{report.messages} messages in {report.seconds:.1f} s ({report.rate:,.0f}/s): "
        f"{report.stored} rows stored, {report.duplicates} already there, "
        f"{report.expired} past their service's retention; rejected: {rejected}"
    )
    for example in report.examples:
        click.echo(f"  {example}", err=True)


# -- query -------------------------------------------------------------------------------


@click.command()
@click.argument("what", type=click.Choice(["latest", "raw", "buckets", "series"]))
@click.option("--type", "device_type", required=True, type=DEVICE_TYPE)
@click.option("--metric", "metrics", multiple=True, help="Repeat for several; default: all.")
@click.option("--device", "device_ids", multiple=True, help="Repeat for several.")
@click.option("--service")
@click.option("--district")
@click.option("--since", callback=duration_option, default="1h", show_default=True)
@click.option("--until", callback=_moment, help="End of the range (ISO 8601); default: now.")
@click.option("--step", callback=duration_option, default="1h", show_default=True)
@click.option("--pool", type=click.Choice(["device", "district"]), default="device")
@click.option("--level", type=click.Choice(["auto", "raw", "1m", "1h"]), default="auto")
@click.option("--points", type=click.IntRange(3, 100_000), default=2000, show_default=True)
@click.option("--method", type=click.Choice(["minmax", "lttb"]), default="minmax")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=_QUERY_LIMIT)
@click.option("--format", "fmt", type=FORMATS, default="table")
@click.pass_context
def query(ctx: click.Context, /, what: str, **opts: Any) -> None:
    """Read the store as the API does: latest values, raw ranges, buckets, chart series."""
    from store.read import Selection  # noqa: PLC0415
    from store.reader import StoreReader  # noqa: PLC0415

    sel = Selection(
        opts["device_type"],
        tuple(opts["metrics"]),
        tuple(opts["device_ids"]) or None,
        opts["service"],
        opts["district"],
    )
    end = opts["until"] or datetime.now(UTC)
    start = end - opts["since"]
    with connect(settings_of(ctx)) as conn:
        reader = StoreReader(conn)
        if what == "latest":
            header = ["time", "device_id", "service", "district", "metric", "value"]
            rows = [[getattr(r, h) for h in header] for r in reader.latest(sel)]
        elif what == "raw":
            page = reader.raw_range(sel, start, end, limit=opts["limit"])
            header = ["time", "device_id", "service", "district", "metric", "value"]
            rows = [[getattr(r, h) for h in header] for r in page.readings]
        elif what == "buckets":
            found = reader.buckets(sel, start, end, opts["step"], pool=opts["pool"],
                                   level=opts["level"])  # fmt: skip
            header = ["bucket", "device_id", "district", "metric", "avg", "min", "max", "count",
                      "last"]  # fmt: skip
            if opts["pool"] == "district":  # a pool shows no one's own reading
                header = ["bucket", "service", "district", "metric", "sum", "avg", "count",
                          "devices"]  # fmt: skip
            rows = [[getattr(b, h) for h in header] for b in found]
        else:
            points = reader.series(sel, start, end, max_points=opts["points"],
                                   method=opts["method"])  # fmt: skip
            header = ["time", "value", "min", "max", "count"]
            rows = [[getattr(p, h) for h in header] for p in points]
    emit(header, rows, opts["fmt"])


# -- mirror ------------------------------------------------------------------------------


@click.command()
@click.option("--once", is_flag=True, help="Send what is committed now, then exit.")
@click.option("--from-now", is_flag=True, help="A new mirror skips the history already stored.")
@click.option("--status", "show_status", is_flag=True, help="Where the mirror is, then exit.")
@click.pass_context
def mirror(ctx: click.Context, once: bool, from_now: bool, show_status: bool) -> None:
    """Copy every committed reading to InfluxDB 2 (SILOBREAK_INFLUX_URL), resuming after outages."""
    from silobreak.settings import mirror_config  # noqa: PLC0415
    from store.mirror import InfluxMirror  # noqa: PLC0415

    settings = settings_of(ctx)
    use_recorded_catalog(settings)
    config = mirror_config(settings, from_beginning=not from_now)
    if show_status:
        click.echo(run_async(lambda _stop: _mirror_status(settings.database_url, config.name)))
        return
    follower = InfluxMirror(settings.database_url, config)
    if not once:
        run_async(follower.run)
        return

    async def one_pass(stop: Any) -> int:
        try:
            return await follower.sync_once(stop)
        finally:
            await follower.close()

    click.echo(f"sent {run_async(one_pass)} reading row(s) to {settings.influx_url}")


async def _mirror_status(database_url: str, name: str) -> str:
    import psycopg  # noqa: PLC0415

    from store.mirror import status  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        now = await status(conn, name)
    if now is None:
        return f"mirror {name} has not run yet"
    error = f"; last error: {now.last_error}" if now.last_error else ""
    return f"mirror {name}: {now.sent} sent, {now.behind} behind, at {now.updated_at}{error}"


@click.command("ha-config")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where to write one <member>.yml per member (not world-readable: passwords).",
)
@click.option("--members", type=click.IntRange(2, 9), default=3, show_default=True)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A member's host, once per member (default: all on 127.0.0.1, ports counted up).",
)
@click.option(
    "--etcd",
    "etcd_hosts",
    multiple=True,
    required=True,
    help="host:port of an etcd member's client URL, once per etcd member.",
)
@click.option("--scope", default="silobreak", show_default=True, help="The cluster's name.")
@click.option(
    "--bind",
    help="The address each member listens on (default: its --host; 0.0.0.0 in containers).",
)
@click.option("--pg-port", type=click.IntRange(1, 65535), default=5432, show_default=True)
@click.option("--api-port", type=click.IntRange(1, 65535), default=8008, show_default=True)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/postgresql/patroni"),
    show_default=True,
    help="Each member's data directory is DATA_ROOT/<member>.",
)
@click.option(
    "--bin-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="PostgreSQL's programs (default: where pg_ctl is found).",
)
@click.option(
    "--auth",
    type=click.Choice(["scram", "trust"]),
    default="scram",
    show_default=True,
    help="scram: generated passwords, logins from any address; trust: 127.0.0.1 only.",
)
@click.option(
    "--superuser-password",
    envvar="SILOBREAK_HA_SUPERUSER_PASSWORD",
    help="The postgres role's password (default: generated); from the environment variable.",
)
@click.option(
    "--replication-password",
    envvar="SILOBREAK_HA_REPLICATION_PASSWORD",
    help="The replicator role's password (default: generated); from the environment variable.",
)
@click.option(
    "--parameter",
    "parameters",
    multiple=True,
    metavar="NAME=VALUE",
    help="A postgresql.conf setting for every member, e.g. shared_preload_libraries=timescaledb.",
)
@click.option("--ttl", type=click.IntRange(5, 3600), default=30, show_default=True)
@click.option("--loop-wait", type=click.IntRange(1, 3600), default=10, show_default=True)
@click.option("--retry-timeout", type=click.IntRange(1, 3600), default=10, show_default=True)
def ha_config(
    directory: Path,
    members: int,
    hosts: tuple[str, ...],
    etcd_hosts: tuple[str, ...],
    scope: str,
    bind: str | None,
    pg_port: int,
    api_port: int,
    data_root: Path,
    bin_dir: Path | None,
    auth: str,
    superuser_password: str | None,
    replication_password: str | None,
    parameters: tuple[str, ...],
    ttl: int,
    loop_wait: int,
    retry_timeout: int,
) -> None:
    """Write Patroni's configuration of a PostgreSQL cluster in synchronous_mode_strict, and
    print the multi-host SILOBREAK_DATABASE_URL that follows its primary (docs/scaling.md)."""
    from silobreak import ha_config as ha  # noqa: PLC0415
    from silobreak.local import find_binary  # noqa: PLC0415

    settings: dict[str, str] = {}
    for given in parameters:
        name, sep, value = given.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{given!r}: write NAME=VALUE", param_hint="--parameter")
        settings[name.strip()] = value.strip()
    passwords = {
        k: v
        for k, v in (
            ("superuser_password", superuser_password),
            ("replication_password", replication_password),
        )
        if v
    }
    config = ha.HaConfig(
        scope=scope,
        members=ha.members(members, hosts, pg_port, api_port, data_root),
        etcd_hosts=etcd_hosts,
        bin_dir=bin_dir or find_binary("pg_ctl").resolve().parent,
        auth="trust" if auth == "trust" else "scram",
        ttl=ttl,
        loop_wait=loop_wait,
        retry_timeout=retry_timeout,
        parameters=settings,
        bind=bind,
        **passwords,
    )
    for path in ha.write(config, directory):
        click.echo(f"wrote {path}")
    click.echo(f"SILOBREAK_DATABASE_URL={config.database_url()}")


COMMANDS: Final[tuple[click.Command, ...]] = (
    migrate, maintain, retention, backfill, query, mirror, ha_config,
)  # fmt: skip
