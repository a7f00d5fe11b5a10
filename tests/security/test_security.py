"""Security checks that held, against the real Mosquitto (generated config) and PostgreSQL.

- a device reads neither another device's topics nor any delivery topic, nor `$SYS`;
- a consumer cannot read another consumer's MQTT delivery topic;
- secrets and tokens never reach a log line.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
import uvicorn
from paho.mqtt.enums import CallbackAPIVersion

from devices.registry import new_record
from silobreak.local import free_port
from silobreak.settings import Settings, streams_config
from store.lifecycle import register_devices
from store.principals import add_principal, issue_token
from streams.api import create_app
from streams.routes import include_all
from tests.e2e.harness import query
from tests.e2e.secure_broker import ACTOR, Device, SecureCity, start_secure_city
from tests.streams.conftest import write_rows

pytestmark = [pytest.mark.integration, pytest.mark.security]

WAIT_S = 20.0


@pytest.fixture
def city(service_dir: Path, db_url: str) -> Iterator[SecureCity]:
    c = start_secure_city(service_dir, db_url)
    try:
        yield c
    finally:
        c.broker.stop()


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def reading(**metrics: float) -> bytes:
    ts = datetime.now(UTC).isoformat()
    return json.dumps({"ts": ts, "metrics": metrics}).encode()


def release(client: paho.Client) -> None:
    """Close the wake-up socket pair paho's loop_start() opens: paho closes it only in
    __del__, which the garbage collector may run after the sockets' own finalizers (a
    ResourceWarning, which this suite turns into an error)."""
    client._reset_sockets()


def deliver_until(write: Callable[[], None], check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        write()
        step = time.monotonic() + 1.0
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            if time.monotonic() > step:
                break
            time.sleep(0.02)
        else:
            return


class Listener:
    """An MQTT 5 client on the plain listener under a broker account; keeps what it receives."""

    def __init__(self, port: int, username: str, password: str, client_id: str) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.username_pw_set(username, password)
        self.port = port
        self.name = username
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._connack: int | None = None
        self._subacks: dict[int, list[int]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def start(self, filters: Sequence[str]) -> list[int]:
        """Connect, subscribe each filter at QoS 1 and return the SUBACK reason codes."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        wait_until(lambda: self._connack is not None, f"{self.name}: CONNACK")
        assert self._connack == 0, f"{self.name}: CONNACK {self._connack}"
        result, mid = self.client.subscribe([(f, 1) for f in filters])
        assert result == paho.MQTT_ERR_SUCCESS
        assert mid is not None
        wait_until(lambda: mid in self._subacks, f"{self.name}: SUBACK")
        return self._subacks[mid]

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.got]

    def has(self, topic: str) -> bool:
        return topic in self.topics()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release(self.client)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connack = int(reason.value)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: Any, _p: Any) -> None:
        self._subacks[mid] = [int(c.value) for c in codes]


def test_a_device_reads_neither_another_devices_topics_nor_any_delivery(
    city: SecureCity, device_prefix: str
) -> None:
    a, b = f"{device_prefix}air", f"{device_prefix}lamp"
    secrets = city.register([new_record(a, "air_sensor"), new_record(b, "streetlight")])
    assert new_record(b, "streetlight").service == "lighting"
    assert new_record(a, "air_sensor").service == "environment"
    with psycopg.connect(city.db_url, autocommit=True) as conn:
        ingest = city.ingest_url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]
        lighting = add_principal(conn, "lighting", "service", actor=ACTOR)
        environment = add_principal(conn, "environment", "service", actor=ACTOR)
        streams = add_principal(conn, "streams", "component", actor=ACTOR)
        planning = add_principal(conn, "planning", "team", actor=ACTOR)
    city.sync()
    port, devices, clients = city.broker.port, city.broker.device_port, city.broker.clients_port

    spy = Listener(devices, a, secrets[a], a)
    controls = {
        "ingest": Listener(port, "component~ingest", ingest, f"{device_prefix}ingest"),
        "device B": Listener(devices, b, secrets[b], b),
        "planning": Listener(clients, "team~planning", planning, f"{device_prefix}planning"),
    }
    publishers = {
        "lighting": Device(f"{device_prefix}lighting", lighting, clients, tls=False,
                           username="service~lighting"),
        "environment": Device(f"{device_prefix}environment", environment, clients, tls=False,
                              username="service~environment"),
        "streams": Device(f"{device_prefix}streams", streams, port, tls=False,
                          username="component~streams"),
        "B": Device(b, secrets[b], devices, tls=False),
    }  # fmt: skip
    try:
        spy.start([f"devices/{b}/telemetry", f"devices/{b}/commands", "devices/+/telemetry",
                   "deliveries/#", "$SYS/#", f"devices/{a}/commands"])  # fmt: skip
        controls["ingest"].start(["devices/+/telemetry"])
        controls["device B"].start([f"devices/{b}/commands"])
        controls["planning"].start(["deliveries/planning/#"])
        for who, pub in publishers.items():
            # "B" reconnects under B's client id: the earlier listener of B is taken over,
            # so B's own listener is started again after B's publishes.
            if who != "B":
                assert pub.connect() == 0, who
        telemetry, command = f"devices/{b}/telemetry", f"devices/{b}/commands"
        delivery = "deliveries/planning/sub-1"
        assert publishers["lighting"].publish(command, b'{"cmd":"dim","level":20}') == 0
        assert publishers["streams"].publish(delivery, b'{"readings":[]}') == 0
        wait_until(lambda: controls["device B"].has(command), "B's command at B")
        wait_until(lambda: controls["planning"].has(delivery), "the delivery at planning")
        controls["device B"].close()
        assert publishers["B"].connect() == 0
        assert publishers["B"].publish(telemetry, reading(power_w=40.0)) == 0
        wait_until(lambda: controls["ingest"].has(telemetry), "B's telemetry at ingest")

        # Sentinel: a message A may read, published after everything above was delivered.
        # The broker routes in order to A's one connection: once it arrives, the others
        # would have too.
        own = f"devices/{a}/commands"
        assert publishers["environment"].publish(own, b'{"cmd":"sentinel"}') == 0
        wait_until(lambda: spy.has(own), "A's own command (the sentinel)")
        assert spy.topics() == [own]
    finally:
        spy.close()
        for listener in controls.values():
            listener.close()
        for pub in publishers.values():
            pub.close()
            release(pub.client)


# -- a consumer cannot read another consumer's MQTT delivery topic ----------------------------


class Gateway:
    """The streams API in-process (real uvicorn) on the secure broker's `component~streams`."""

    def __init__(self, settings: Settings) -> None:
        app = create_app(settings)
        include_all(app, streams_config(settings))
        self.base = f"http://127.0.0.1:{free_port()}"
        port = int(self.base.rsplit(":", 1)[1])
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "uvicorn", 30)
        assert self.server.started, "uvicorn exited"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_a_consumer_cannot_read_another_consumers_delivery_topic(
    city: SecureCity, device_prefix: str
) -> None:
    p = device_prefix
    lamp, light = f"{p}lamp", f"{p}tl"
    fleet = [new_record(lamp, "streetlight"), new_record(light, "traffic_light")]
    tokens: dict[str, str] = {}
    broker_secrets: dict[str, str] = {}
    with psycopg.connect(city.db_url, autocommit=True) as conn:
        register_devices(conn, fleet, actor=ACTOR)
        for name, kind in (("lighting", "service"), ("mobility", "service"),
                           ("planning", "team"), ("transport", "team")):  # fmt: skip
            broker_secrets[name] = add_principal(conn, name, kind, actor=ACTOR)
            tokens[name] = issue_token(conn, name, ttl=timedelta(days=1), actor=ACTOR).token
        streams = add_principal(conn, "streams", "component", actor=ACTOR)
    city.sync()
    port = city.broker.port
    settings = Settings(
        database_url=city.db_url,
        mqtt_url=f"mqtt://component~streams:{streams}@127.0.0.1:{port}",
        streams_poll_interval=timedelta(milliseconds=100),
    )
    gateway = Gateway(settings)

    def subscribe(owner: str, consumer: str, device_type: str, metric: str) -> str:
        expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
        body = {"owner": owner, "purpose": "security test", "granularity": "raw",
                "expires_at": expires, "consumer": consumer, "device_types": [device_type],
                "metrics": [metric]}  # fmt: skip
        with httpx.Client(base_url=gateway.base, timeout=30) as h:
            r = h.post(
                "/v1/grants", json=body, headers={"Authorization": f"Bearer {tokens[owner]}"}
            )
            assert r.status_code == 201, r.text
            r = h.post("/v1/subscriptions", json={"grant_id": r.json()["id"], "delivery": "mqtt"},
                       headers={"Authorization": f"Bearer {tokens[consumer]}"})  # fmt: skip
            assert r.status_code == 201, r.text
        topic: str = r.json()["topic"]
        assert topic.startswith(f"deliveries/{consumer}/")
        return topic

    clients = city.broker.clients_port
    x = Listener(clients, "team~planning", broker_secrets["planning"], f"{p}planning")
    y = Listener(clients, "team~transport", broker_secrets["transport"], f"{p}transport")
    try:
        y_topic = subscribe("lighting", "transport", "streetlight", "power_w")
        x.start(["deliveries/transport/#", "deliveries/+/#", "deliveries/planning/#"])
        y.start(["deliveries/transport/#"])
        # The gateway's first MQTT publish after it takes on its subscriptions is sometimes
        # lost (see the report): write a fresh reading each second until one arrives.
        deliver_until(
            lambda: write_rows(
                city.db_url, "streetlight", [(datetime.now(UTC), lamp, "lighting", 1, 50.0, 42.0)]
            ),
            lambda: y.has(y_topic),
            "Y's delivery at Y",
        )
        # Sentinel: X's own delivery, produced only after Y's arrived. (X's subscription is
        # made only now: two taken on by the gateway in the same scan sometimes stall; see
        # the report.)
        x_topic = subscribe("mobility", "planning", "traffic_light", "vehicle_count")
        deliver_until(
            lambda: write_rows(
                city.db_url, "traffic_light", [(datetime.now(UTC), light, "mobility", 2, 7)]
            ),
            lambda: x.has(x_topic),
            "X's own delivery (the sentinel)",
        )
        assert set(x.topics()) == {x_topic}, x.topics()
        assert set(y.topics()) == {y_topic}
        readings = [r for _, body in y.got for r in json.loads(body)["readings"]]
        assert readings
        assert {(r["device_id"], r["value"]) for r in readings} == {(lamp, 42.0)}
    finally:
        x.close()
        y.close()
        gateway.stop()


# -- secrets and tokens never appear in logs ---------------------------------------------------


def run_cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
    done = subprocess.run(
        [sys.executable, "-m", "silobreak", "--debug", *args],
        env={**clean, **env}, cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def shown_once(out: str, label: str) -> str:
    """The value after `label` on the single stdout line that shows it."""
    lines = [line for line in out.splitlines() if label in line]
    assert len(lines) == 1, out
    return lines[0].split(label, 1)[1].strip()


class Service:
    """A long-running `silobreak --debug <command>`, stdout and stderr both kept."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")}
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "silobreak", "--debug", *args], env={**clean, **env},
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str) -> None:
        wait_until(
            lambda: any(text in line for line in list(self.lines)) or self.proc.poll() is not None,
            f"{text!r} in the log",
            30,
        )
        assert any(text in line for line in self.lines), "\n".join(self.lines[-20:])

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return "\n".join(self.lines)


def test_secrets_and_tokens_never_appear_in_logs(
    city: SecureCity, device_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = device_prefix
    env = {"SILOBREAK_DATABASE_URL": city.db_url, "SILOBREAK_BROKER_DIR": str(city.files.directory)}
    logs: dict[str, str] = {}
    secrets: dict[str, str] = {}

    added = run_cli(tmp_path, env, "devices", "add", f"{p}lamp", "--type", "streetlight")
    secrets["devices add"] = shown_once(
        added.stdout, "secret (shown once; the device's MQTT password):"
    )
    logs["devices add"] = added.stderr
    (tmp_path / "fleet.csv").write_text(
        "device_id,device_type,service\n" + "".join(f"{p}m{i},meter,energy\n" for i in range(3))
    )
    secrets_file = tmp_path / "secrets.csv"
    imported = run_cli(tmp_path, env, "devices", "import", str(tmp_path / "fleet.csv"),
                       "--secrets-out", str(secrets_file))  # fmt: skip
    logs["devices import"] = imported.stderr + imported.stdout  # its secrets go to the file only
    for line in secrets_file.read_text().splitlines()[1:]:
        device_id, secret = line.split(",")
        secrets[f"import {device_id}"] = secret
    assert len(secrets) == 4
    for name, kind in (("streams", "component"), ("planning", "team")):
        out = run_cli(tmp_path, env, "principals", "add", name, "--kind", kind)
        secrets[f"principal {name}"] = shown_once(out.stdout, "broker secret (shown once):")
        logs[f"principals add {name}"] = out.stderr
    issued = run_cli(tmp_path, env, "principals", "token", "issue", "planning", "--ttl", "1d")
    token = shown_once(issued.stdout, "bearer token (shown once):")
    secrets["token"] = token
    logs["token issue"] = issued.stderr
    secrets["ingest"] = city.ingest_url.split("//", 1)[1].split("@", 1)[0].split(":", 1)[1]

    # Ingest with its password in the MQTT URL; a device publishes through it.
    ingest = Service(tmp_path, {**env, "SILOBREAK_MQTT_URL": city.ingest_url,
                                "SILOBREAK_INGEST_CLIENT_ID": f"{p}ingest",
                                "SILOBREAK_METRICS_PORT": str(free_port()),
                                "SILOBREAK_REGISTRY_REFRESH": "200ms"}, "ingest")  # fmt: skip
    try:
        ingest.wait_for("subscribed")
        lamp = Device(f"{p}lamp", secrets["devices add"], city.broker.device_port, tls=False)
        try:
            assert lamp.connect() == 0
            topic = f"devices/{p}lamp/telemetry"
            assert lamp.publish(topic, reading(dim_level=50.0, power_w=42.0)) == 0
            count = "SELECT count(*) FROM readings WHERE device_id = %s"
            wait_until(
                lambda: query(city.db_url, count, f"{p}lamp")[0][0] > 0, "the stored reading"
            )
        finally:
            lamp.close()
            release(lamp.client)
        # A refused login too: its password must not be logged either.
        wrong = Device(f"{p}m0", secrets["token"], city.broker.device_port, tls=False)
        try:
            assert wrong.connect() != 0
        finally:
            wrong.close()
            release(wrong.client)
    finally:
        logs["ingest"] = ingest.stop()

    # The streams API with its broker password in the URL, asked with a bearer token.
    api_port = free_port()
    streams_url = (
        f"mqtt://component~streams:{secrets['principal streams']}@127.0.0.1:{city.broker.port}"
    )
    api = Service(tmp_path, {**env, "SILOBREAK_MQTT_URL": streams_url,
                             "SILOBREAK_API_PORT": str(api_port)}, "streams")  # fmt: skip
    try:
        base = f"http://127.0.0.1:{api_port}"

        def up() -> bool:
            assert api.proc.poll() is None, "\n".join(api.lines)
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code < 500
            except httpx.TransportError:
                return False

        wait_until(up, "the streams API", 30)
        with httpx.Client(base_url=base, timeout=10) as h:
            ok = h.get("/v1/grants", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200, ok.text
            bad = h.get("/v1/grants", headers={"Authorization": f"Bearer {token}x"})
            assert bad.status_code == 401, bad.text
            assert token not in bad.text
    finally:
        logs["streams"] = api.stop()
    # The access log was captured (so the check below reads real request lines).
    assert '"GET /v1/grants HTTP/1.1" 401' in logs["streams"], logs["streams"]

    # In-process parts, with Python logging captured at DEBUG.
    with caplog.at_level(logging.DEBUG):
        with psycopg.connect(city.db_url, autocommit=True) as conn:
            done = register_devices(conn, [new_record(f"{p}air", "air_sensor")], actor=ACTOR)
            secrets["in-process device"] = done.secrets[f"{p}air"]
            secrets["in-process principal"] = add_principal(conn, "ops", "team", actor=ACTOR)
            secrets["in-process token"] = issue_token(
                conn, "ops", ttl=timedelta(days=1), actor=ACTOR
            ).token
        city.sync()
    logs["caplog"] = caplog.text
    logs["mosquitto"] = (city.broker.cfg.directory / "mosquitto.log").read_text()

    assert all(len(s) >= 16 for s in secrets.values()), secrets
    leaks = [(what, where) for what, s in secrets.items() for where, text in logs.items()
             if s in text]  # fmt: skip
    assert leaks == []
    assert "subscribed" in logs["ingest"], "ingest's log was not captured"
