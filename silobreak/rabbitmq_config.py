"""RabbitMQ node configuration for silobreak's broker tier: MQTT for devices, quorum queues, a
three-node cluster (`silobreak broker-config --engine rabbitmq`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from silobreak.settings import SettingsError

AMQP_PORT: Final = 5672
MQTT_PORT: Final = 1883
# Unacknowledged messages the MQTT plugin sends one MQTT subscriber (default 10): streams'
# MQTT delivery acknowledges in windows, as it does with Mosquitto.
MQTT_PREFETCH: Final = 1000
# Publishers are blocked (flow control, no loss: a QoS 1 publish waits for its PUBACK) when a
# node's free disk falls under this: room for the quorum queues' write-ahead log segments.
DEPLOY_DISK_FREE: Final = "2GB"
ENABLED_PLUGINS: Final = "[rabbitmq_mqtt].\n"


@dataclass(frozen=True, slots=True)
class RabbitConfig:
    """What `silobreak broker-config --engine rabbitmq` is asked for (one node's file; every
    node of a cluster gets the same, naming all of them)."""

    cluster_nodes: Sequence[str] = ()  # `rabbit@host` names; empty: a single node
    bind: str = "0.0.0.0"  # noqa: S104 - a broker node serves other hosts
    amqp_port: int = AMQP_PORT
    mqtt_port: int = MQTT_PORT
    disk_free_limit: str | None = DEPLOY_DISK_FREE  # None: RabbitMQ's default (50 MB)

    def check(self) -> None:
        if self.amqp_port == self.mqtt_port:
            raise SettingsError("AMQP and MQTT need a port each")
        for name in self.cluster_nodes:
            if "@" not in name:
                raise SettingsError(f"cluster node {name!r}: give it as rabbit@HOST")
        if len(set(self.cluster_nodes)) != len(self.cluster_nodes):
            raise SettingsError("a cluster node is named twice")


def render_rabbitmq(cfg: RabbitConfig) -> str:
    """The whole rabbitmq.conf (new-style, sysctl format)."""
    cfg.check()
    lines = [
        "# Written by `silobreak broker-config --engine rabbitmq`; see docs/scaling.md.",
        f"listeners.tcp.default = {cfg.bind}:{cfg.amqp_port}",
        f"mqtt.listeners.tcp.default = {cfg.bind}:{cfg.mqtt_port}",
        # Devices' MQTT sessions and subscriptions live in quorum queues, replicated on every
        # node: a node's death loses none (3.10's default is a classic queue on one node).
        "mqtt.durable_queue_type = quorum",
        f"mqtt.prefetch = {MQTT_PREFETCH}",
        "mqtt.allow_anonymous = false",
        "mqtt.exchange = amq.topic",
    ]
    if cfg.disk_free_limit is not None:
        lines.append(f"disk_free_limit.absolute = {cfg.disk_free_limit}")
    if cfg.cluster_nodes:
        lines += [
            # A node cut off from the majority stops serving rather than accepting publishes
            # that the majority will never see.
            "cluster_partition_handling = pause_minority",
            "cluster_formation.peer_discovery_backend = classic_config",
            *(
                f"cluster_formation.classic_config.nodes.{n} = {name}"
                for n, name in enumerate(cfg.cluster_nodes, 1)
            ),
        ]
    return "\n".join(lines) + "\n"


def write_rabbitmq(cfg: RabbitConfig, directory: Path) -> list[Path]:
    """Write `rabbitmq.conf` and `enabled_plugins` into `directory`; the paths written."""
    text = render_rabbitmq(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    conf, plugins = directory / "rabbitmq.conf", directory / "enabled_plugins"
    conf.write_text(text)
    plugins.write_text(ENABLED_PLUGINS)
    return [conf, plugins]
