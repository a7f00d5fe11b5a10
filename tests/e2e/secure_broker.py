"""A Mosquitto running the config `silobreak broker-config` writes, and paho devices for it."""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from devices.registry import DeviceRecord
from silobreak.broker_config import BrokerConfig, render, write
from silobreak.broker_sync import BrokerFiles, sync_broker
from silobreak.certs import DevCerts, make_dev_certs
from silobreak.local import LocalMosquitto, free_port
from store.lifecycle import register_devices
from store.principals import add_principal

ACTOR = "test"
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code 135: CONNACK and PUBACK


class GeneratedMosquitto(LocalMosquitto):
    """LocalMosquitto's process handling around the generated config, as it is written."""

    def __init__(self, cfg: BrokerConfig) -> None:
        super().__init__(cfg.directory, port=cfg.plain_port)
        self.cfg = cfg
        self.tls_port = cfg.tls_port
        assert cfg.device_plain_port is not None
        assert cfg.clients_plain_port is not None
        # Plain listeners for devices and for services, teams and the coordinator (the plain
        # `port` admits the platform's components only).
        self.device_port = cfg.device_plain_port
        self.clients_port = cfg.clients_plain_port

    def config_text(self) -> str:
        return render(self.cfg)

    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid


@dataclass
class SecureCity:
    """A broker with the generated config, a migrated database, and the ingest account."""

    broker: GeneratedMosquitto
    certs: DevCerts
    db_url: str
    ingest_url: str

    @property
    def files(self) -> BrokerFiles:
        return self.broker.cfg.files

    def register(self, records: list[DeviceRecord]) -> dict[str, str]:
        """Register devices with credentials and apply them to the broker; their secrets."""
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            secrets = register_devices(conn, records, actor=ACTOR).secrets
            sync_broker(conn, self.files)
        return secrets

    def sync(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            sync_broker(conn, self.files)


@contextmanager
def secure_city(service_dir: Path, db_url: str) -> Iterator[SecureCity]:
    """start_secure_city(), its broker stopped at the end."""
    city = start_secure_city(service_dir, db_url)
    try:
        yield city
    finally:
        city.broker.stop()


def start_secure_city(service_dir: Path, db_url: str) -> SecureCity:
    certs = make_dev_certs(service_dir / "certs")
    cfg = BrokerConfig(
        profile="dev",
        directory=service_dir / "mqtt",
        plain_port=free_port(),
        tls_port=free_port(),
        clients_port=free_port(),
        device_plain_port=free_port(),
        clients_plain_port=free_port(),
        cafile=certs.ca_cert,
        certfile=certs.server_cert,
        keyfile=certs.server_key,
        run_as="root",  # pytest's tmp dirs are closed to the `mosquitto` user
    )
    write(cfg, cfg.directory / "mosquitto.conf")
    with psycopg.connect(db_url, autocommit=True) as conn:
        secret = add_principal(conn, "ingest", "component", actor=ACTOR)
        sync_broker(conn, cfg.files)
    broker = GeneratedMosquitto(cfg)
    broker.start()
    url = f"mqtt://component~ingest:{secret}@127.0.0.1:{cfg.plain_port}"
    return SecureCity(broker, certs, db_url, url)


class Device:
    """A field device as firmware connects: paho 2.x, MQTT 5, QoS 1, its own network thread."""

    def __init__(
        self,
        device_id: str,
        secret: str,
        port: int,
        *,
        ca: Path | None = None,
        tls: bool = True,
        username: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(username or device_id, secret)
        if tls:
            self.client.tls_set(ca_certs=str(ca) if ca else None)
        self.port = port
        self.connack: int | None = None
        self.disconnected_at: float | None = None
        self._acks: dict[int, int] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def connect(self, timeout: float = 10.0) -> int:
        """Connect and return the CONNACK reason code (0 is success)."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self.connack is not None, timeout):
                raise AssertionError(f"{self.device_id}: no CONNACK in {timeout}s")
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> int:
        """Publish QoS 1 and return the PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._acks, timeout):
                raise AssertionError(f"{self.device_id}: no PUBACK for {topic} in {timeout}s")
            return self._acks[info.mid]

    def wait_disconnected(self, timeout: float) -> float:
        """Wait until the broker drops the connection; returns when (time.monotonic)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.disconnected_at is not None, timeout):
                raise AssertionError(f"{self.device_id}: still connected after {timeout}s")
        assert self.disconnected_at is not None
        return self.disconnected_at

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self.connack = int(reason.value)
            self._cond.notify_all()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        with self._cond:
            self.disconnected_at = time.monotonic()
            self._cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self._cond:
            self._acks[mid] = int(reason.value)
            self._cond.notify_all()


def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))
