"""Local RabbitMQ nodes with their MQTT plugin (3.1.1 only in 3.10), for tests and benchmarks:
one node, or a three-node cluster configured as `silobreak broker-config --engine rabbitmq`
writes it.

Everything is its own: node names, ports, data and log directories, Erlang cookie (HOME) and an
epmd on a port of its own, so that a RabbitMQ already running on the machine is never touched.
A node is stopped by `rabbitmqctl stop` on its own node name, then by its process group's id;
a cluster's nodes are killed by the pid each wrote to its own pid file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from silobreak.local import free_port
from silobreak.rabbitmq_config import RabbitConfig, render_rabbitmq

# RabbitMQ 3.10 boots in ~20 s on a 2-core machine shared with other test runs; three nodes
# booting at once on those two cores take about twice that.
START_TIMEOUT_S: Final = 180.0
STOP_TIMEOUT_S: Final = 60.0
# One rabbitmqctl call (it boots an Erlang VM of its own: ~1-2 s here, more when loaded).
_CTL_TIMEOUT_S: Final = 60.0
# The Debian package's server script; /usr/sbin/rabbitmq-server would switch to the
# `rabbitmq` user and that user's files.
_SERVER: Final = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
_CTL: Final = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
# Erlang's schedulers spin ("busy wait") before sleeping; on two shared cores, three nodes
# spinning starve each other and the test: no busy waiting.
_ERL_ARGS: Final = "+sbwt none +sbwtdcpu none +sbwtdio none"


def missing() -> str | None:
    """Why no node can be started here, or None."""
    if not _SERVER.is_file() or shutil.which("epmd") is None:
        return "rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    return None


class LocalRabbitMQ:
    """`rabbitmq-server` with `rabbitmq_mqtt` on 127.0.0.1, user guest/guest.

    Alone it runs an epmd of its own and keeps its cookie in `base_dir`; in a cluster the
    nodes share one epmd (`epmd_port`) and one cookie (`home`)."""

    def __init__(
        self,
        base_dir: Path,
        *,
        name: str | None = None,
        epmd_port: int | None = None,
        home: Path | None = None,
        cluster_nodes: Sequence[str] = (),
    ) -> None:
        self.base_dir = base_dir.resolve()
        self.node = f"{name or 'silobreak-' + uuid.uuid4().hex[:8]}@localhost"
        self.mqtt_port = free_port()
        self.amqp_port = free_port()
        self._dist_port = free_port()
        self._own_epmd = epmd_port is None
        self._epmd_port = free_port() if epmd_port is None else epmd_port
        self._home = (home or self.base_dir).resolve()
        self._cluster_nodes = tuple(cluster_nodes)
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self.log_file = self.base_dir / "server.out"

    @property
    def url(self) -> str:
        """The broker URL for this project's client: MQTT 3.1.1, as the guest user."""
        return f"mqtt://guest:guest@127.0.0.1:{self.mqtt_port}?protocol=3.1.1"

    @property
    def amqp_url(self) -> str:
        """This node's AMQP 0-9-1 URL, as the guest user."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def start(self) -> None:
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Start the node's processes; `wait_started()` waits for it to take connections."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.base_dir / "rabbitmq.conf").write_text(self._config())
        env = self._env()
        if self._own_epmd and self._epmd is None:
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self._epmd_port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.base_dir / "rabbitmq.pid").unlink(missing_ok=True)
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

    def wait_started(self) -> None:
        """Wait until the node takes MQTT connections (its last listener to open)."""
        self.wait_for(lambda: _accepts(self.mqtt_port), "take MQTT connections")

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` while the node runs, for up to START_TIMEOUT_S; fail with its log."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if not self.running or time.monotonic() > deadline:
                tail = self.log_file.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"RabbitMQ node {self.node} did not {what}:\n{tail}")
            time.sleep(0.2)

    def ctl(self, *args: str) -> str:
        """Run `rabbitmqctl -n <this node> args...`; its output, or RuntimeError."""
        done = subprocess.run(
            [str(_CTL), "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=_CTL_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.node}: {done.stderr}")
        return done.stdout

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (the pid it wrote), as a crash would; no shutdown."""
        os.kill(int((self.base_dir / "rabbitmq.pid").read_text().strip()), signal.SIGKILL)
        server, self._server = self._server, None
        if server is not None:
            server.wait(STOP_TIMEOUT_S)

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
                os.killpg(server.pid, signal.SIGKILL)  # the group launch() made, no other
                server.wait()
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait(STOP_TIMEOUT_S)

    def _config(self) -> str:
        # guest may log in over 127.0.0.1 only by default; that is all this node listens on.
        guest = "loopback_users = none\n"
        if self._cluster_nodes:  # what `silobreak broker-config --engine rabbitmq` writes
            cfg = RabbitConfig(
                cluster_nodes=self._cluster_nodes,
                bind="127.0.0.1",
                amqp_port=self.amqp_port,
                mqtt_port=self.mqtt_port,
                disk_free_limit=None,  # the machine's disk is shared with other tests
            )
            return render_rabbitmq(cfg) + guest
        return (
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            # Unacknowledged messages per MQTT subscriber (default 10): ingest acknowledges
            # after commit and needs a window, as it gets from Mosquitto.
            "mqtt.prefetch = 1000\n" + guest
        )

    def _env(self) -> dict[str, str]:
        base = self.base_dir
        return {
            **os.environ,
            "HOME": str(self._home),  # its Erlang cookie
            "ERL_EPMD_PORT": str(self._epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _ERL_ARGS,
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),  # none: not /etc's
        }


class RabbitCluster:
    """Three clustered nodes configured as `silobreak broker-config --engine rabbitmq` writes
    (MQTT sessions' queues are quorum queues, replicated on all three).

    Node 1 boots alone, then nodes 2 and 3 boot at once and join it through the classic-config
    peer discovery (they list node 1); `start()` returns when node 1 reports all three running.
    """

    SIZE: Final = 3

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir.resolve()
        self._epmd_port = free_port()
        self._epmd: subprocess.Popen[bytes] | None = None
        stem = f"silobreak-{uuid.uuid4().hex[:6]}"
        names = [f"{stem}-{n}" for n in range(1, self.SIZE + 1)]
        self.nodes = [
            LocalRabbitMQ(
                self.base_dir / name,
                name=name,
                epmd_port=self._epmd_port,
                home=self.base_dir,
                cluster_nodes=[f"{n}@localhost" for n in names],
            )
            for name in names
        ]

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        cookie = self.base_dir / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)  # Erlang refuses a cookie others may read
        self._epmd = subprocess.Popen(
            ["epmd", "-port", str(self._epmd_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            first, *others = self.nodes
            first.start()
            for node in others:
                node.launch()
            for node in others:
                node.wait_started()
            first.wait_for(lambda: len(self.running_nodes()) == self.SIZE, "see 3 running nodes")
        except BaseException:
            self.stop()
            raise

    def running_nodes(self, via: LocalRabbitMQ | None = None) -> list[str]:
        """The running nodes of the cluster as `via` (a running node) sees them."""
        node = via or next(n for n in self.nodes if n.running)
        try:
            status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        except RuntimeError:
            return []
        return sorted(status.get("running_nodes", []))

    def node_named(self, name: str) -> LocalRabbitMQ:
        return next(n for n in self.nodes if n.node == name)

    def stop(self) -> None:
        # Throwaway data: a kill is enough, and a clean stop of a quorum member waits on the others.
        with ThreadPoolExecutor(self.SIZE) as pool:
            list(pool.map(_kill_quietly, self.nodes))
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            epmd.wait(STOP_TIMEOUT_S)


def _kill_quietly(node: LocalRabbitMQ) -> None:
    server = node._server
    if server is not None and server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)  # the group launch() made, no other
        server.wait(STOP_TIMEOUT_S)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
