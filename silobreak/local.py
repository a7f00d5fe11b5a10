"""Run throwaway PostgreSQL and Mosquitto servers as local processes for tests and `demo`."""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from stat import S_IXOTH
from types import TracebackType
from typing import Self, TypedDict
from urllib.parse import quote

import psycopg

from silobreak.errors import SilobreakError

logger = logging.getLogger(__name__)

# A cold initdb + first start takes ~1 s here; CI machines under load can be 20x slower.
START_TIMEOUT_S = 60.0
# Mosquitto writes its whole persistence file on SIGTERM; a large backlog takes seconds.
STOP_TIMEOUT_S = 60.0
# Short enough that start() returns within a few ms of the server becoming ready.
POLL_INTERVAL_S = 0.02
# Lines of a server log quoted in an error: enough for the FATAL and its context.
LOG_TAIL_LINES = 30
# Linux limits a unix socket path (sun_path) to 107 bytes plus the NUL.
MAX_SOCKET_PATH = 107

# Ports for servers we start: below the kernel's ephemeral range, above well-known services.
_SERVER_PORTS = (20_000, 32_000)
_PORT_TRIES = 200

# Where Debian puts server binaries that are not on PATH.
_PG_LIB = Path("/usr/lib/postgresql")
_SBIN = Path("/usr/sbin")
_PACKAGES = {
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "postgres": "postgresql",
    "mosquitto": "mosquitto",
}


class LocalServiceError(SilobreakError):
    """A local PostgreSQL or Mosquitto could not be found, started or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Drawn below Linux's ephemeral range (32768-60999): a port the kernel picked with bind(0)
    can be handed out again as the source port of any outgoing connection before our server
    binds it, and tests open thousands of those.
    """
    rng = random.SystemRandom()
    for _ in range(_PORT_TRIES):
        port = rng.randrange(*_SERVER_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise LocalServiceError(f"no free TCP port in {_SERVER_PORTS} after {_PORT_TRIES} tries")


def find_binary(name: str) -> Path:
    """Find `name` on PATH, then in Debian's PostgreSQL bin dirs (newest first), then /usr/sbin."""
    on_path = shutil.which(name)
    if on_path is not None:
        return Path(on_path)
    candidates = sorted(_PG_LIB.glob(f"*/bin/{name}"), key=_version_key, reverse=True)
    candidates.append(_SBIN / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    package = _PACKAGES.get(name, name)
    raise LocalServiceError(
        f"{name} not found; install the Debian package {package} (apt-get install -y {package})"
    )


class _Service(ABC):
    """Start/stop/restart and `with` for a local server process."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalPostgres(_Service):
    """A PostgreSQL cluster in `base_dir`, listening only on 127.0.0.1:`port`, trust auth.

    `waldir`: where the cluster's WAL lives (initdb --waldir; `data/pg_wal` links to it), e.g.
    a volume of its own; it must be empty or absent when the cluster is created.
    `wal_segment_mb`: the size of a WAL segment file (initdb --wal-segsize; 16 by default).
    Both apply when the cluster is created.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        waldir: Path | None = None,
        wal_segment_mb: int | None = None,
    ) -> None:
        self.base_dir = base_dir.resolve()
        self.port = port if port is not None else free_port()
        self.waldir = waldir.resolve() if waldir is not None else None
        self.wal_segment_mb = wal_segment_mb
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        # initdb, postgres and pg_ctl from one directory: one major version.
        self._bin_dir = find_binary("pg_ctl").resolve().parent
        self._as_user = _postgres_user() if os.geteuid() == 0 else _UserKwargs()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def start(self) -> None:
        """Create the cluster on first use, start it and wait until it accepts connections."""
        if self._process is not None and self._process.poll() is None:
            return
        self._stop_leftover()
        self._prepare_base_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_settings()
        with self.log_file.open("ab") as log:
            # The postmaster is our child, not pg_ctl's daemon: we reap it at once after
            # kill(), where a zombie left for init would keep postmaster.pid "in use".
            self._process = subprocess.Popen(
                [str(self._bin_dir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.base_dir,
                start_new_session=True,
                **self._as_user,
            )
        self._wait_accepting(self._process)
        logger.info("postgres %s started on port %d", self.base_dir, self.port)

    def stop(self) -> None:
        """Stop with `pg_ctl stop -m fast`: roll back open transactions, checkpoint, exit."""
        if self.is_running():
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S)))
        self._reap()

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, as a crash would; start() recovers."""
        pid = self._postmaster_pid()
        if pid is not None:
            kill_postgres(pid, self._reap)

    def is_running(self) -> bool:
        return self._postmaster_pid() is not None

    def _stop_leftover(self) -> None:
        # A server from an earlier run that died without stop() (e.g. a killed `demo`).
        if self._postmaster_pid() is not None:
            logger.warning("postgres %s: stopping a server left running", self.base_dir)
            self.stop()

    def _prepare_base_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        socket_path = self.base_dir / f".s.PGSQL.{self.port}"
        if len(str(socket_path).encode()) > MAX_SOCKET_PATH:
            raise LocalServiceError(f"postgres {self.base_dir}: path too long for a unix socket")
        if not self._as_user:
            return
        _chown(self.base_dir, self._as_user)
        writable = ["test", "-w", str(self.base_dir), "-a", "-x", str(self.base_dir)]
        if subprocess.run(writable, check=False, **self._as_user).returncode != 0:
            closed = [str(p) for p in self.base_dir.parents if not p.stat().st_mode & S_IXOTH]
            raise LocalServiceError(
                f"postgres {self.base_dir}: the postgres user cannot write there (PostgreSQL "
                f"refuses to run as root; closed to others: {', '.join(closed) or 'none'}); "
                "use a directory whose parents anyone may enter, e.g. under /tmp"
            )

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            # The cluster is thrown away; fsyncing initdb's files only slows every test session.
            "--no-sync",
            "--no-instructions",
            *(["--waldir", str(self.waldir)] if self.waldir is not None else []),
            *([f"--wal-segsize={self.wal_segment_mb}"] if self.wal_segment_mb else []),
        )  # fmt: skip
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\ninclude_if_exists = 'silobreak.conf'\n")

    def _write_settings(self) -> None:
        # Rewritten on every start, so a port or base_dir change takes effect on reuse.
        socket_dir = str(self.base_dir).replace("'", "''")
        settings = f"""\
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{socket_dir}'
# A database per test plus connection pools from several components at once.
max_connections = 200
shared_buffers = '128MB'
timezone = 'UTC'
log_timezone = 'UTC'
"""
        settings_file = self.data_dir / "silobreak.conf"
        settings_file.write_text(settings, encoding="utf-8")
        _chown(settings_file, self._as_user)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [str(self._bin_dir / program), *args],
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            check=False,
            **self._as_user,
        )
        if result.returncode != 0:
            output = result.stderr.strip() or result.stdout.strip()
            raise LocalServiceError(
                f"postgres {self.base_dir}: {program} failed (exit {result.returncode}): "
                f"{output}\n--- {self.log_file} ---\n{_tail(self.log_file)}"
            )

    def _wait_accepting(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError as exc:
                exited = process.poll() is not None
                if exited or time.monotonic() > deadline:
                    if not exited:
                        self.kill()
                    raise LocalServiceError(
                        f"postgres {self.base_dir}: not accepting connections on port "
                        f"{self.port} ({'exited' if exited else 'timed out'}): {exc}"
                        f"\n--- {self.log_file} ---\n{_tail(self.log_file)}"
                    ) from exc
            time.sleep(POLL_INTERVAL_S)

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait(timeout=STOP_TIMEOUT_S)
            self._process = None

    def _postmaster_pid(self) -> int | None:
        return postmaster_pid(self.data_dir)


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in a cluster's postmaster.pid if that process is alive, else None."""
    try:
        first_line = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except (FileNotFoundError, PermissionError):
        return None
    if not first_line.strip().isdigit():
        return None
    pid = int(first_line)
    return pid if _alive(pid) else None


def kill_postgres(pid: int, reap: Callable[[], None] = lambda: None) -> None:
    """SIGKILL a postmaster and its backends, as a crash would, and wait until they are gone;
    `reap` waits on the postmaster where it is the caller's child."""
    # Each backend is its own process group (PostgreSQL calls setsid), so they are found
    # by parent; stopping the postmaster first means it forks no new one meanwhile.
    children: list[int] = []
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    reap()
    # An orphaned backend still attached to the shared memory would block the restart.
    _wait_for(
        lambda: not any(map(_alive, [pid, *children])),
        STOP_TIMEOUT_S,
        f"postgres {pid} and its backends to exit",
    )


class _UserKwargs(TypedDict, total=False):
    user: int
    group: int
    extra_groups: list[int]


def _postgres_user() -> _UserKwargs:
    """Debian's `postgres` account, as subprocess arguments: PostgreSQL refuses root."""
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        msg = "no postgres user to run PostgreSQL as (it refuses root); install postgresql"
        raise LocalServiceError(f"{msg} (apt-get install -y postgresql)") from None
    groups = os.getgrouplist("postgres", user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}


class LocalMosquitto(_Service):
    """A Mosquitto broker child process listening only on 127.0.0.1:`port`."""

    def __init__(
        self,
        base_dir: Path,
        *,
        port: int | None = None,
        extra_config: str = "",
        persistence: bool = True,
    ) -> None:
        self.base_dir = base_dir.resolve()
        self.port = port if port is not None else free_port()
        self.extra_config = extra_config
        self.persistence = persistence
        self.config_file = self.base_dir / "mosquitto.conf"
        self.log_file = self.base_dir / "mosquitto.log"
        # Output before the log file is open (config errors, bind failures) lands here.
        self.stderr_file = self.base_dir / "mosquitto.stderr"
        self._binary = find_binary("mosquitto")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Started as root, Mosquitto 2.0 drops to the `mosquitto` user before it opens
            # the log, pid, persistence, password and ACL files; staying root lets tests put
            # those anywhere (e.g. pytest's 0700 tmp dirs). Ignored when not started as root.
            "user root",
            f"pid_file {self.base_dir / 'mosquitto.pid'}",
            f"log_dest file {self.log_file}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # Measured on 2.0.11 (subscriber never acking, 20k-70k QoS 1 publishes): a v5
            # client's Receive Maximum alone sets how many unacknowledged publishes it gets
            # (RM 5000 -> 5000, whatever this says). This applies to v3 clients and v5 clients
            # that omit Receive Maximum, as paho does: the default 20 starves ack-after-commit,
            # while 0 and 65535 both mean "no limit" and reuse packet ids past 65535 unacked.
            # 2.0 also advertises it to publishers as the CONNACK Receive Maximum.
            "max_inflight_messages 65534",
            # Behind the in-flight window, per client (an ingestor that is down, or whose store
            # is down); past either limit QoS 1 messages are silently dropped (default 1000).
            # 1M is ~15 minutes of the demo city at ~1k msg/s.
            "max_queued_messages 1000000",
            # Queued payload bytes per client: 1M typical telemetry payloads (<= 200 B) fit;
            # a stuck client with big payloads is cut at 256 MiB instead of the broker's RAM.
            "max_queued_bytes 268435456",
            # A device or ingestor absent for a day is gone; its session and queue are freed.
            "persistent_client_expiration 1d",
            # PUBACKs and small publishes go out at once instead of waiting on Nagle's timer.
            "set_tcp_nodelay true",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.base_dir}",
                # Seconds between snapshots: bounds what a SIGKILL of the broker loses; each
                # rewrites the whole file, so not much shorter. SIGTERM (stop()) always saves.
                "autosave_interval 60",
            ]
        else:
            lines.append("persistence false")
        if not _sets_option(self.extra_config, "allow_anonymous"):
            lines.append("allow_anonymous true")
        return "\n".join(lines) + "\n" + self.extra_config + "\n"

    def start(self) -> None:
        """Start `mosquitto -c` as a child process and wait until the port accepts TCP."""
        if self.is_running():
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config_text(), encoding="utf-8")
        with self.stderr_file.open("ab") as err:
            # Its own session: a Ctrl-C at the terminal reaches us, and we stop the broker in
            # order (after the processes that depend on it) instead of it dying first.
            self._process = subprocess.Popen(
                [str(self._binary), "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts_tcp(self.port):
            if self._process.poll() is not None:
                raise self._error(f"exited with {self._process.returncode} during start")
            if time.monotonic() > deadline:
                self.kill()
                raise self._error(f"port {self.port} not accepting after {START_TIMEOUT_S}s")
            time.sleep(POLL_INTERVAL_S)
        logger.info("mosquitto %s started on port %d", self.base_dir, self.port)

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its persistence file) and wait for the exit."""
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise self._error(f"ignored SIGTERM for {STOP_TIMEOUT_S}s; killed") from None
        finally:
            self._process = None

    def kill(self) -> None:
        """SIGKILL: the broker loses what it received since its last autosave."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        self._process = None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _error(self, what: str) -> LocalServiceError:
        return LocalServiceError(
            f"mosquitto {self.base_dir}: {what}"
            f"\n--- {self.stderr_file} ---\n{_tail(self.stderr_file)}"
            f"\n--- {self.log_file} ---\n{_tail(self.log_file)}"
        )


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<major>/bin/<name>; "9.6" sorts below "15".
    parts = path.parent.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


def _sets_option(config: str, option: str) -> bool:
    return any(line.split()[:1] == [option] for line in config.splitlines())


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    # A killed backend is orphaned to init, which may reap it late: a zombie is dead.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in {"Z", "X"}


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:  # fields after the name: state, ppid, ...
            children.append(int(stat.parent.name))
    return children


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LocalServiceError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def _chown(path: Path, as_user: _UserKwargs) -> None:
    if as_user:
        os.chown(path, as_user["user"], as_user["group"])


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        return f"(unreadable: {exc})"
    return "\n".join(lines[-LOG_TAIL_LINES:])
