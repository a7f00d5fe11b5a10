"""Keep the running broker's password and ACL files in line with the registry, and reload it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from devices.broker_auth import BrokerAuth
from silobreak.errors import SilobreakError
from store.lifecycle import load_broker_auth

logger = logging.getLogger(__name__)

PASSWORD_FILE: Final = "passwd"  # noqa: S105 - a file name
ACL_FILE: Final = "acl"
PID_FILE: Final = "mosquitto.pid"
# The broker's listener groups, each with password and ACL files of its own (broker_config).
LISTENERS: Final = ("platform", "clients", "devices")
# Any constant works; it only has to be the same for every process that syncs this broker, so
# that two syncs cannot interleave and leave an older registry state in the files.
_LOCK_KEY: Final = 0x51_10_B2_EB
# A new file is readable by its owner and group only (the broker's group, see write_private).
_FILE_MODE: Final = 0o640
# The channels the registry's triggers notify on (migrations 0001 and 0004).
NOTIFY_CHANNELS: Final = ("silobreak_broker_auth", "silobreak_registry")
# Notifications arriving this soon after the first are folded into the same sync.
_COALESCE_S: Final = 0.2
# The least time between two syncs the watcher starts after notifications: a registry change
# reaches the broker within about this, and a flood of notifications costs at most one
# version check per this (each reload makes Mosquitto re-check every client's password).
MIN_SYNC_S: Final = 1.0


class BrokerSyncError(SilobreakError, OSError):
    """The broker's files could not be written or the broker could not be signalled."""


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """Where a broker keeps the files silobreak writes: `passwd`, `acl`, and its pid file."""

    directory: Path

    @property
    def password_file(self) -> Path:
        return self.directory / PASSWORD_FILE

    @property
    def acl_file(self) -> Path:
        return self.directory / ACL_FILE

    @property
    def pid_file(self) -> Path:
        return self.directory / PID_FILE

    def listener(self, name: str) -> tuple[Path, Path]:
        """The password and ACL files of one listener: `platform` (the plain listener of the
        platform's components: `passwd`, `acl`), `clients` or `devices` (`passwd.devices`, ...)."""
        if name == "platform":
            return self.password_file, self.acl_file
        return self.directory / f"{PASSWORD_FILE}.{name}", self.directory / f"{ACL_FILE}.{name}"

    def all_files(self) -> list[Path]:
        return [path for name in LISTENERS for path in self.listener(name)]


@dataclass(frozen=True, slots=True)
class SyncResult:
    devices: int
    principals: int
    reloaded_pid: int | None  # the broker told to reload, or None when none runs here
    changed: bool = True  # False: the files already said this; nothing written, no reload
    versions: tuple[int, int] = (0, 0)  # (registry, broker auth) as this sync read them

    def describe(self) -> str:
        what = f"{self.devices} device and {self.principals} principal account(s)"
        if not self.changed:
            return f"broker files unchanged ({what}); no reload"
        if self.reloaded_pid is None:
            return f"broker files written ({what}); no running broker to reload"
        return f"broker reloaded with {what} (pid {self.reloaded_pid})"


def sync_broker(
    conn: psycopg.Connection[Any], files: BrokerFiles, *, only_if_changed: bool = False
) -> SyncResult:
    """Write the password and ACL files from the registry, then make the broker reload them.

    Mosquitto re-reads both on SIGHUP and disconnects every connected client whose account
    is gone or whose password changed (measured on 2.0.11: within ~0.1 s), without a restart.
    On each reload it checks every connected client's password again (PBKDF2, ~10k devices'
    worth): `only_if_changed` writes and reloads only when the rendered files differ.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        seen = versions(conn)
        auth = load_broker_auth(conn)
        counts = (len(auth.devices), len(auth.principals))
        if only_if_changed and _unchanged(auth, files):
            return SyncResult(*counts, None, changed=False, versions=seen)
        write_auth_files(auth, files)
        pid = reload_broker(files.pid_file)
    return SyncResult(*counts, pid, versions=seen)


def versions(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(registry version, broker auth version): what moves when the files' content may."""
    row = conn.execute(
        "SELECT (SELECT version FROM registry_version), (SELECT version FROM broker_auth_version)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _unchanged(auth: BrokerAuth, files: BrokerFiles) -> bool:
    try:
        return all(
            path.read_text(encoding="utf-8") == text for path, text in _rendered(auth, files)
        )
    except OSError:
        return False


def _rendered(auth: BrokerAuth, files: BrokerFiles) -> list[tuple[Path, str]]:
    """(path, text) of every file, each listener's ACL before its password file."""
    out = []
    for name, (passwords, acl) in auth.listener_files().items():
        password_path, acl_path = files.listener(name)
        out += [(acl_path, acl), (password_path, passwords)]
    return out


def write_auth_files(auth: BrokerAuth, files: BrokerFiles) -> None:
    # The ACL first: a user in the new password file must never meet the old ACL file.
    for path, text in _rendered(auth, files):
        write_private(path, text)


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically, keeping the owner, group and mode of the file it replaces."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        st = path.stat()
        mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode, owner = _FILE_MODE, None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        tmp.chmod(mode)  # the umask may have narrowed os.open's mode
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, *owner)
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BrokerSyncError(f"cannot write {path}: {exc.strerror or exc}") from exc


def reload_broker(pid_file: Path) -> int | None:
    """SIGHUP the Mosquitto named by `pid_file`; None when no Mosquitto runs under that pid."""
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BrokerSyncError(f"cannot read {pid_file}: {exc.strerror or exc}") from exc
    if not text.isdigit():
        return None
    pid = int(text)
    # A stale pid file may name an unrelated process by now: signal only a mosquitto.
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    if comm != "mosquitto":
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return None
    except PermissionError as exc:
        raise BrokerSyncError(
            f"not allowed to signal the broker (pid {pid}); run this as the broker's user"
        ) from exc
    return pid


def watch(
    database_url: str,
    files: BrokerFiles,
    *,
    interval: float,
    stop: Callable[[], bool] = lambda: False,
    on_wake: Callable[[SyncResult | None], None] = lambda _: None,
) -> None:
    """Sync at start, then after registry or principal changes, and every `interval` seconds
    besides (a missed notification costs at most that long).

    A notification is a hint: any database login may send one (PostgreSQL has no privilege on
    NOTIFY). After one, the versions are read (one row each); only when one moved are the
    files rendered, and only when they differ are they written and the broker reloaded; and
    at most once per MIN_SYNC_S. `on_wake` is told what each wake-up did (None: nothing)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for channel in NOTIFY_CHANNELS:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        result = sync_broker(conn, files)
        logger.info("%s", result.describe())
        last = time.monotonic()
        while not stop():
            woken = next(iter(conn.notifies(timeout=interval, stop_after=1)), None)
            if woken is not None:
                # An import notifies once per statement, a flood many times: all of them
                # until MIN_SYNC_S after the last sync fold into one look.
                hold = max(_COALESCE_S, last + MIN_SYNC_S - time.monotonic())
                for _ in conn.notifies(timeout=hold):
                    pass
                if versions(conn) == result.versions:
                    on_wake(None)
                    continue
            result = sync_broker(conn, files, only_if_changed=True)
            last = time.monotonic()
            if result.changed:
                logger.info("%s", result.describe())
            on_wake(result)
