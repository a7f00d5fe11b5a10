"""A RabbitMQ node of the test's own with its MQTT plugin (3.1.1 only in 3.10), for interop tests.

Everything is its own: node name, ports, data and log directories, Erlang cookie (HOME) and an
epmd on a port of its own, so that a RabbitMQ already running on the machine is never touched.
It is stopped by `rabbitmqctl stop` on its own node name, then by its process group's id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Final

from silobreak.local import free_port

# RabbitMQ 3.10 boots in ~20 s on a 2-core machine shared with other test runs.
START_TIMEOUT_S: Final = 120.0
STOP_TIMEOUT_S: Final = 60.0
# The Debian package's server script; /usr/sbin/rabbitmq-server would switch to the
# `rabbitmq` user and that user's files.
_SERVER: Final = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
_CTL: Final = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


def missing() -> str | None:
    """Why no node can be started here, or None."""
    if not _SERVER.is_file() or shutil.which("epmd") is None:
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    return None


class LocalRabbitMQ:
    """`rabbitmq-server` with `rabbitmq_mqtt` on 127.0.0.1, user guest/guest."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir.resolve()
        self.node = f"silobreak-{uuid.uuid4().hex[:8]}@localhost"
        self.mqtt_port = free_port()
        self._amqp_port = free_port()
        self._dist_port = free_port()
        self._epmd_port = free_port()
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self.log_file = self.base_dir / "server.out"

    @property
    def url(self) -> str:
        """The broker URL for this project's client: MQTT 3.1.1, as the guest user."""
        return f"mqtt://guest:guest@127.0.0.1:{self.mqtt_port}?protocol=3.1.1"

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.base_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self._amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            # Unacknowledged messages per MQTT subscriber (default 10): ingest acknowledges
            # after commit and needs a window, as it gets from Mosquitto.
            "mqtt.prefetch = 1000\n"
            # guest may log in over 127.0.0.1 only by default; that is all this node listens on.
            "loopback_users = none\n"
        )
        env = self._env()
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self._epmd_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self.log_file.open("ab") as out:
            self._server = subprocess.Popen(
                [str(_SERVER)],
                env=env,
                cwd=self.base_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its process group is what stop() ends last
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts_mqtt(self.mqtt_port):
            if self._server.poll() is not None or time.monotonic() > deadline:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"RabbitMQ node {self.node} did not start:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None and server.poll() is None:
            subprocess.run(
                [str(_CTL), "-n", self.node, "stop"],
                env=self._env(),
                capture_output=True,
                timeout=STOP_TIMEOUT_S,
                check=False,
            )
            try:
                server.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)  # the group start() made, no other
                server.wait()
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait(STOP_TIMEOUT_S)

    def _env(self) -> dict[str, str]:
        base = self.base_dir
        return {
            **os.environ,
            "HOME": str(base),  # its own Erlang cookie
            "ERL_EPMD_PORT": str(self._epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self._amqp_port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),  # none: not /etc's
        }


def _accepts_mqtt(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
