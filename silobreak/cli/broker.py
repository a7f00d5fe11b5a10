"""`silobreak broker-config`, `broker-sync` and `dev-certs`: the broker's files (Mosquitto, or
the nodes of a RabbitMQ cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from silobreak.cli.common import connect, settings_of
from silobreak.settings import SettingsError, parse_duration

if TYPE_CHECKING:
    from silobreak.certs import DevCerts


@click.command("broker-config")
@click.option(
    "--engine",
    type=click.Choice(["mosquitto", "rabbitmq"]),
    default="mosquitto",
    show_default=True,
    help="rabbitmq: a node of the clustered broker tier (docs/scaling.md).",
)
@click.option(
    "--cluster-node",
    "cluster_nodes",
    multiple=True,
    help="rabbitmq: a node of the cluster, as rabbit@HOST; give each (the same on every node).",
)
@click.option(
    "--amqp-port", type=click.IntRange(1, 65535), default=5672, show_default=True,
    help="rabbitmq: the AMQP listener ingestors consume from.",
)  # fmt: skip
@click.option("--profile", type=click.Choice(["dev", "deploy"]), default="dev", show_default=True)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The broker's directory: password, ACL and pid files (dev: also data and log).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the config (default: DIR/mosquitto.conf; - for stdout).",
)
@click.option("--plain-bind", default="127.0.0.1", show_default=True)
@click.option("--plain-port", type=click.IntRange(1, 65535), default=1883, show_default=True)
@click.option("--tls-bind", help="Default: 127.0.0.1 (dev), every interface (deploy).")
@click.option("--tls-port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option(
    "--clients-port",
    type=click.IntRange(1, 65535),
    default=8884,
    show_default=True,
    help="TLS listener of services, teams and the coordinator.",
)
@click.option(
    "--device-plain-port",
    type=click.IntRange(1, 65535),
    help="Also a plain device listener on --plain-bind (development, private networks).",
)
@click.option(
    "--clients-plain-port",
    type=click.IntRange(1, 65535),
    help="Also a plain listener for services, teams and the coordinator on --plain-bind.",
)
@click.option("--cafile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--certfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keyfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--dev-certs/--no-dev-certs",
    default=True,
    help="dev profile without --certfile: make (or reuse) a development CA in DIR/certs.",
)
@click.option("--user", "run_as", help="The user Mosquitto becomes when started as root.")
def broker_config(
    engine: str,
    cluster_nodes: tuple[str, ...],
    amqp_port: int,
    profile: str,
    directory: Path,
    output: Path | None,
    plain_bind: str,
    plain_port: int,
    tls_bind: str | None,
    tls_port: int,
    clients_port: int,
    device_plain_port: int | None,
    clients_plain_port: int | None,
    cafile: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    dev_certs: bool,
    run_as: str | None,
) -> None:
    """Write a Mosquitto config: listeners, limits sized for ingest, persistence, auth files;
    or, with --engine rabbitmq, a RabbitMQ node's rabbitmq.conf and enabled_plugins."""
    from silobreak.broker_config import BrokerConfig, render, write  # noqa: PLC0415

    if engine == "rabbitmq":
        _rabbitmq_config(profile, directory, output, cluster_nodes, amqp_port, plain_port)
        return

    if profile == "dev" and dev_certs and certfile is None:
        certs = _dev_certs(directory / "certs", ())
        cafile, certfile, keyfile = certs.ca_cert, certs.server_cert, certs.server_key
    cfg = BrokerConfig(
        profile="dev" if profile == "dev" else "deploy",
        directory=directory,
        plain_bind=plain_bind,
        plain_port=plain_port,
        tls_bind=tls_bind,
        tls_port=tls_port,
        clients_port=clients_port,
        device_plain_port=device_plain_port,
        clients_plain_port=clients_plain_port,
        cafile=cafile,
        certfile=certfile,
        keyfile=keyfile,
        run_as=run_as,
    )
    if output is not None and str(output) == "-":
        cfg.check()
        click.echo(render(cfg), nl=False)
        return
    target = output or directory / "mosquitto.conf"
    write(cfg, target)
    click.echo(f"wrote {target}; start it with: mosquitto -c {target.resolve()}")
    if cfg.tls:
        click.echo(f"devices connect with TLS on port {tls_port}, trusting {cfg.cafile}")
        click.echo(f"services and teams connect with TLS on port {clients_port}")
    click.echo(f"the platform's components (ingest, streams) connect on port {plain_port}")
    click.echo(f"then: SILOBREAK_BROKER_DIR={directory.resolve()} silobreak broker-sync", err=True)


def _rabbitmq_config(
    profile: str,
    directory: Path,
    output: Path | None,
    cluster_nodes: tuple[str, ...],
    amqp_port: int,
    mqtt_port: int,
) -> None:
    from silobreak.rabbitmq_config import (  # noqa: PLC0415
        DEPLOY_DISK_FREE,
        RabbitConfig,
        render_rabbitmq,
        write_rabbitmq,
    )

    cfg = RabbitConfig(
        cluster_nodes=cluster_nodes,
        bind="127.0.0.1" if profile == "dev" else "0.0.0.0",  # noqa: S104 - other hosts' devices
        amqp_port=amqp_port,
        mqtt_port=mqtt_port,
        disk_free_limit=None if profile == "dev" else DEPLOY_DISK_FREE,
    )
    if output is not None and str(output) == "-":
        click.echo(render_rabbitmq(cfg), nl=False)
        return
    for path in write_rabbitmq(cfg, directory):
        click.echo(f"wrote {path}")
    click.echo(
        "start each node with RABBITMQ_CONFIG_FILE and RABBITMQ_ENABLED_PLUGINS_FILE pointing"
        f" there; devices publish MQTT 3.1.1 on port {mqtt_port}, ingestors consume AMQP on"
        f" port {amqp_port} (SILOBREAK_INGEST_AMQP_URL)"
    )


@click.command("broker-sync")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The broker's directory (default: SILOBREAK_BROKER_DIR).",
)
@click.option("--watch", is_flag=True, help="Keep running: sync on every registry change.")
@click.option(
    "--interval", default="30s", show_default=True, help="With --watch: sync at least this often."
)
@click.pass_context
def broker_sync(ctx: click.Context, directory: Path | None, watch: bool, interval: str) -> None:
    """Write the broker's password and ACL files from the registry and reload the broker."""
    from silobreak.broker_sync import BrokerFiles, sync_broker  # noqa: PLC0415
    from silobreak.broker_sync import watch as watch_loop  # noqa: PLC0415

    settings = settings_of(ctx)
    target = directory or settings.broker_dir
    if target is None:
        raise SettingsError("name the broker's directory: --dir DIR or SILOBREAK_BROKER_DIR")
    files = BrokerFiles(target)
    if watch:
        try:
            seconds = parse_duration(interval).total_seconds()
        except ValueError as exc:
            raise SettingsError(f"--interval: {exc}") from None
        try:
            watch_loop(settings.database_url, files, interval=seconds)
        except KeyboardInterrupt:
            return
        return
    with connect(settings) as conn:
        click.echo(sync_broker(conn, files).describe())


@click.command("dev-certs")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", "hosts", multiple=True, help="A name or address devices connect to.")
def dev_certs(directory: Path, hosts: tuple[str, ...]) -> None:
    """Make a development CA and a broker certificate (localhost and --host names)."""
    certs = _dev_certs(directory, hosts, fresh=True)
    click.echo(f"CA: {certs.ca_cert} (give this to devices)")
    click.echo(f"broker: {certs.server_cert} and {certs.server_key}")


COMMANDS: Final[tuple[click.Command, ...]] = (broker_config, broker_sync, dev_certs)


def _dev_certs(directory: Path, hosts: tuple[str, ...], *, fresh: bool = False) -> DevCerts:
    from silobreak.certs import DevCerts, make_dev_certs  # noqa: PLC0415

    existing = DevCerts(
        directory / "ca.crt",
        directory / "ca.key",
        directory / "server.crt",
        directory / "server.key",
    )
    # Reused when present: devices already trust this CA.
    if not fresh and all(
        p.is_file() for p in (existing.ca_cert, existing.server_cert, existing.server_key)
    ):
        return existing
    return make_dev_certs(directory, hosts)
