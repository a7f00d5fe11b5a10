"""A throwaway replicated PostgreSQL under Patroni, for tests and benchmarks: three etcd
members, three PostgreSQL members in synchronous_mode_strict (`silobreak ha-config`'s files).

Everything is its own: ports drawn by `free_port`, data under `base_dir`, a cluster name
(`scope`) of its own. etcd runs as the caller; Patroni (and the PostgreSQL it starts, which
refuses root) as `postgres`. Every process is stopped by its own pid at the end; the
machine's own PostgreSQL and etcd services are never touched.

Readiness is read from what the servers say: etcd's `/health`, Patroni's REST API
(`/primary`, `/replica`, `/cluster`), never from the clock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import psycopg

from silobreak import ha_config
from silobreak.ha_config import HaConfig
from silobreak.local import (
    LocalServiceError,
    _postgres_user,
    find_binary,
    free_port,
    kill_postgres,
    postmaster_pid,
)

# A three-member bootstrap (initdb, two base backups) on 2 shared cores, other tests running.
START_TIMEOUT_S: Final = 180.0
STOP_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.1
# Leader key TTL, loop and DCS retry (Patroni needs loop_wait + 2 * retry_timeout <= ttl):
# a dead primary's key expires within `TTL_S`, then a replica takes over.
TTL_S: Final = 15
LOOP_WAIT_S: Final = 2
RETRY_TIMEOUT_S: Final = 5


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    for program in ("patroni", "etcd"):
        if shutil.which(program) is None:
            package = "patroni" if program == "patroni" else "etcd-server"
            return f"{program} is not installed (apt-get install -y {package})"
    return None


def _get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, JSON body or None) of a GET; status 0 when nothing answers."""
    try:
        r = httpx.get(url, timeout=timeout)
    except httpx.HTTPError:
        return 0, None
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, None


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise LocalServiceError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


@dataclass
class _Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


class LocalEtcd:
    """Three etcd 3.4 members on 127.0.0.1, one cluster."""

    def __init__(self, base_dir: Path, members: int = 3) -> None:
        self.base_dir = base_dir.resolve()
        self.token = f"silobreak-{uuid.uuid4().hex[:8]}"
        self.names = [f"etcd{i}" for i in range(members)]
        self.client_ports = [free_port() for _ in self.names]
        self.peer_ports = [free_port() for _ in self.names]
        self._procs: list[_Proc] = []

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def start(self) -> None:
        etcd = find_binary("etcd")
        cluster = ",".join(
            f"{n}=http://127.0.0.1:{p}" for n, p in zip(self.names, self.peer_ports, strict=True)
        )
        for name, client, peer in zip(self.names, self.client_ports, self.peer_ports, strict=True):
            data = self.base_dir / name
            data.mkdir(parents=True, exist_ok=True)
            data.chmod(0o700)
            log = self.base_dir / f"{name}.log"
            args = [
                str(etcd),
                f"--name={name}",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster={cluster}",
                f"--initial-cluster-token={self.token}",
                "--initial-cluster-state=new",
                # A busy shared machine: elections on a heartbeat missed by a stalled core
                # would move the DCS leader around for nothing.
                "--heartbeat-interval=200",
                "--election-timeout=2000",
            ]
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
            self._procs.append(_Proc(name, proc, log))
        wait_for(self.healthy, START_TIMEOUT_S, "etcd members healthy")

    def healthy(self) -> bool:
        for proc in self._procs:
            if proc.process.poll() is not None:
                raise LocalServiceError(f"{proc.name} exited:\n{_tail(proc.log)}")
        return all(_healthy(host) for host in self.hosts)

    def stop(self) -> None:
        for proc in self._procs:
            _terminate(proc.process)
        self._procs.clear()


def _healthy(host: str) -> bool:
    body = _get(f"http://{host}/health")[1]
    return isinstance(body, dict) and body.get("health") == "true"


@dataclass
class Member:
    """One Patroni member: its REST API port, its PostgreSQL port and data directory."""

    name: str
    api_port: int
    pg_port: int
    base_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log(self) -> Path:
        return self.base_dir / "patroni.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def status(self, path: str) -> int:
        return _get(f"{self.api}/{path}")[0]

    def postmaster_pid(self) -> int | None:
        return postmaster_pid(self.data_dir)


class LocalPatroni:
    """Three Patroni 3.0 members in synchronous_mode_strict over a `LocalEtcd`.

    `url_for(db)` is the multi-host libpq URL of all three with
    `target_session_attrs=read-write`: it reaches whichever member is the primary.
    """

    def __init__(
        self,
        base_dir: Path,
        etcd: LocalEtcd,
        members: int = 3,
        *,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.base_dir = base_dir.resolve()
        # postgresql.conf settings of every member (e.g. track_commit_timestamp for benches).
        self.parameters = {"max_connections": 100, **(parameters or {})}
        self.etcd = etcd
        self.scope = f"silobreak-{uuid.uuid4().hex[:8]}"
        self.members = [
            Member(f"pg{i}", free_port(), free_port(), self.base_dir / f"pg{i}")
            for i in range(members)
        ]
        # Where the other members reach a member's PostgreSQL (its WAL stream, pg_rewind), by
        # name, when not its own port: a relay a test can cut. Set before `start`.
        self.connect_ports: dict[str, int] = {}
        self._as_user = _postgres_user() if os.geteuid() == 0 else {}
        self._bin_dir = find_binary("pg_ctl").resolve().parent

    # -- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        hosts = ",".join(f"127.0.0.1:{m.pg_port}" for m in self.members)
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"

    def member_url(self, member: Member, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{member.pg_port}/{dbname}"

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        self.start_stopped()
        self.wait_running()

    def start_stopped(self) -> None:
        """Start the Patroni of each member not running (first start, or after `crash`):
        a member that was the primary rejoins as a replica (pg_rewind)."""
        patroni = find_binary("patroni")
        for member in self.members:
            if member.process is not None:
                continue
            member.base_dir.mkdir(parents=True, exist_ok=True)
            config = member.base_dir / "patroni.yml"
            config.write_text(ha_config.render(self._config(member)) + "\n")
            if self._as_user:
                uid, gid = self._as_user["user"], self._as_user["group"]
                member.log.touch()
                for path in (member.base_dir, config, member.log):
                    os.chown(path, uid, gid)
            with member.log.open("ab") as out:
                member.process = subprocess.Popen(
                    [str(patroni), str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    cwd=member.base_dir,
                    start_new_session=True,
                    env={**os.environ, "HOME": str(member.base_dir)},
                    **self._as_user,
                )

    def wait_running(self) -> None:
        """Wait for one primary, every other member a streaming replica, one of them its
        synchronous standby."""
        wait_for(self._all_running, START_TIMEOUT_S, "a primary, streaming replicas, a sync one")

    def _config(self, member: Member) -> dict[str, Any]:
        """What `silobreak ha-config` writes, trusting 127.0.0.1, with short timings."""
        config = HaConfig(
            scope=self.scope,
            members=tuple(
                ha_config.Member(m.name, "127.0.0.1", m.pg_port, m.api_port, m.data_dir)
                for m in self.members
            ),
            etcd_hosts=tuple(self.etcd.hosts),
            bin_dir=self._bin_dir,
            auth="trust",
            ttl=TTL_S,
            loop_wait=LOOP_WAIT_S,
            retry_timeout=RETRY_TIMEOUT_S,
            parameters=self.parameters,
        )
        config.check()
        written = config.member_config(config.members[self.members.index(member)])
        # The member's socket in its own directory, not the machine's /var/run/postgresql.
        written["postgresql"]["parameters"] = {"unix_socket_directories": str(member.base_dir)}
        if member.name in self.connect_ports:
            port = self.connect_ports[member.name]
            written["postgresql"]["connect_address"] = f"127.0.0.1:{port}"
        return written

    def _all_running(self) -> bool:
        for member in self.members:
            if member.process is not None and member.process.poll() is not None:
                raise LocalServiceError(f"patroni {member.name} exited:\n{_tail(member.log)}")
        primaries = [m for m in self.members if m.status("primary") == 200]
        replicas = [m for m in self.members if m.status("replica") == 200]
        return len(primaries) == 1 and len(replicas) == len(self.members) - 1 and self.synced()

    def stop(self) -> None:
        """SIGTERM each Patroni (it stops its PostgreSQL), then SIGKILL what is left."""
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.process is not None:
                _terminate(member.process)
                member.process = None
            pid = member.postmaster_pid()
            if pid is not None:
                kill_postgres(pid)

    # -- what the tests ask ---------------------------------------------------------------

    def cluster(self) -> dict[str, Any]:
        """Patroni's /cluster as any live member sees it."""
        for member in self.members:
            status, body = _get(f"{member.api}/cluster")
            if status == 200 and isinstance(body, dict):
                return body
        return {}

    def primary(self) -> Member | None:
        live = [m for m in self.members if m.process is not None]
        found = [m for m in live if m.status("primary") == 200]
        return found[0] if len(found) == 1 else None

    def sync_standby(self) -> Member:
        """The member Patroni has made the primary's synchronous standby."""
        names = [
            m.get("name")
            for m in self.cluster().get("members", [])
            if m.get("role") == "sync_standby"
        ]
        found = [m for m in self.members if m.name in names]
        if len(found) != 1:
            raise LocalServiceError(f"not one synchronous standby: {names}")
        return found[0]

    def synced(self) -> bool:
        """A leader with a synchronous standby that is streaming."""
        members = self.cluster().get("members", [])
        roles = {m.get("role") for m in members if m.get("state") in ("running", "streaming")}
        return "leader" in roles and "sync_standby" in roles

    def wait_primary(self, not_this: Member | None = None) -> Member:
        """Wait until one member other than `not_this` is the primary and takes writes."""
        found: list[Member] = []

        def ready() -> bool:
            primary = self.primary()
            if primary is None or primary is not_this:
                return False
            try:
                with psycopg.connect(self.member_url(primary), connect_timeout=5) as conn:
                    in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            except psycopg.OperationalError:
                return False
            if in_recovery is None or in_recovery[0]:
                return False
            found[:] = [primary]
            return True

        wait_for(ready, START_TIMEOUT_S, "a primary that takes writes")
        return found[0]

    def crash(self, member: Member) -> None:
        """SIGKILL the member's Patroni and PostgreSQL (all its processes), as a dead host."""
        pid = member.postmaster_pid()
        if member.process is not None:
            with contextlib.suppress(ProcessLookupError):
                member.process.kill()
            member.process.wait(STOP_TIMEOUT_S)
            member.process = None
        if pid is not None:
            kill_postgres(pid)

    def switchover(self, leader: Member, candidate: Member) -> None:
        """Ask the leader's Patroni to hand over to `candidate` now (REST /switchover)."""
        r = httpx.post(
            f"{leader.api}/switchover",
            json={"leader": leader.name, "candidate": candidate.name},
            timeout=START_TIMEOUT_S,
        )
        if r.status_code != 200:
            raise LocalServiceError(f"switchover refused: {r.status_code} {r.text}")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
