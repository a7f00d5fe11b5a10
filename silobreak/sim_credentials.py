"""The simulated fleet's device secrets: issued through the registry, kept in a file of its own."""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg

from devices.credentials import broker_hash_matches
from devices.registry import DeviceRecord
from firmware_sim import BrokerError, parse_broker_url
from firmware_sim.link import connect_refusal
from silobreak.errors import SilobreakError
from store.lifecycle import LifecycleError, register_devices, rotate_secret

logger = logging.getLogger(__name__)

# Relative to the working directory, beside the other local state (.silobreak/ is gitignored).
DEFAULT_SECRETS_FILE: Final = Path(".silobreak/simulator-secrets.csv")
_HEADER: Final = ("device_id", "secret")
# `broker-sync --watch` applies a change within a fraction of a second, or at its next
# periodic sync (30 s by default) when it missed the notification.
BROKER_ACCEPT_TIMEOUT_S: Final = 40.0
# Between two probes of the broker: a reload takes 30-65 ms here (docs/identity.md).
_PROBE_EVERY_S: Final = 0.2


class SimSecretsError(SilobreakError, OSError):
    """The simulator's secrets file cannot be read or written; the message names it."""


@dataclass(frozen=True, slots=True)
class FleetCredentials:
    """The fleet's MQTT passwords after registration, and what registration changed."""

    # Every active device of the fleet (decommissioned ones have none).
    passwords: dict[str, str]
    new_devices: int
    # Devices this run made active: ingest refuses their readings as unknown_device until its
    # next registry refresh. The new ones only: a decommissioned device is never re-activated.
    activated: int
    # Devices given a secret in this run: new ones, and active ones whose secret this
    # simulator did not hold (a live one it lacks is `replaced`; or the device had none).
    changed: tuple[str, ...]
    replaced: int
    # Devices of the fleet an operator decommissioned: left so, and out of the run.
    decommissioned: tuple[str, ...] = ()


def provision(
    conn: psycopg.Connection[Any],
    records: Sequence[DeviceRecord],
    *,
    secrets_file: Path,
    actor: str,
) -> FleetCredentials:
    """Register the fleet's missing devices, and know a live secret of every active one.

    Devices already in the registry are left as they are (owner, place, attributes): only
    the missing ones are registered. A decommissioned device stays decommissioned, and its
    secret, revoked with it, leaves the file. An active device whose live credential matches
    the secret in the file keeps it, so running the same city again (or twice at once)
    disconnects nothing; one whose secret the file lacks (the file was lost, or someone
    rotated or revoked it) gets a new one: the simulator owns the devices it runs. The file
    is written before the registry commits.
    """
    held = read_secrets(secrets_file)
    ids = [r.device_id for r in records]
    with conn.transaction():
        lifecycle: dict[str, str] = dict(
            conn.execute(
                "SELECT device_id, lifecycle FROM devices WHERE device_id = ANY(%s)", (ids,)
            ).fetchall()
        )
        live: dict[str, str] = dict(
            conn.execute(
                "SELECT device_id, broker_hash FROM device_credentials"
                " WHERE device_id = ANY(%s) AND revoked_at IS NULL",
                (ids,),
            ).fetchall()
        )
        active = [i for i in ids if lifecycle.get(i) == "active"]
        retired = [i for i in ids if i in lifecycle and lifecycle[i] != "active"]
        kept = {
            i: held[i]
            for i in active
            if i in live and i in held and broker_hash_matches(held[i], live[i])
        }
        missing = [r for r in records if r.device_id not in lifecycle]
        issued: dict[str, str] = {}
        new = 0
        if missing:
            new = register_devices(conn, missing, actor=actor, deliver=issued.update).new
        replaced = 0
        for device_id in (i for i in active if i not in kept):
            try:
                issued[device_id] = rotate_secret(conn, device_id, actor=actor)
            except LifecycleError:  # decommissioned since the lookup above
                retired.append(device_id)
                continue
            replaced += device_id in live
        stale = {i for i in retired if i in held}
        if issued or stale:
            remaining = {i: secret for i, secret in held.items() if i not in stale}
            write_secrets(secrets_file, remaining | issued)
    return FleetCredentials(
        passwords=kept | issued,
        new_devices=new,
        activated=new,
        changed=tuple(issued),
        replaced=replaced,
        decommissioned=tuple(retired),
    )


def read_secrets(path: Path) -> dict[str, str]:
    """device_id -> secret from a `device_id,secret` CSV file; empty when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SimSecretsError(f"secrets file {str(path)!r}: {exc.strerror or exc}") from exc
    rows = list(csv.reader(io.StringIO(text)))
    if rows and tuple(rows[0]) == _HEADER:
        rows = rows[1:]
    secrets: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        if len(row) != 2 or not all(row):
            raise SimSecretsError(
                f"secrets file {str(path)!r}: line {number} is not `device_id,secret`;"
                " fix it, or delete the file to give the fleet new secrets"
            )
        secrets[row[0]] = row[1]
    return secrets


def write_secrets(path: Path, secrets: dict[str, str]) -> None:
    """Replace the file atomically, readable by its owner only (0600, its folder 0700)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_HEADER)
    writer.writerows(sorted(secrets.items()))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(out.getvalue())
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SimSecretsError(f"secrets file {str(path)!r}: {exc.strerror or exc}") from exc


def wait_for_broker(
    url: str, device_id: str, secret: str, *, timeout: float = BROKER_ACCEPT_TIMEOUT_S
) -> float:
    """Wait until the broker accepts this device's secret, i.e. has reloaded its password file.

    Returns the seconds waited; BrokerError when it still refuses after `timeout`.
    """
    broker = parse_broker_url(url)
    started = time.monotonic()
    while True:
        refusal = connect_refusal(
            broker,
            client_id=f"silobreak-sim-probe-{os.getpid()}",
            username=device_id,
            password=secret,
            timeout=5.0,
        )
        waited = time.monotonic() - started
        if refusal is None:
            return waited
        if waited > timeout:
            raise BrokerError(
                f"the broker at {broker} still refuses {device_id} ({refusal}) {timeout:g} s after"
                " registration: set SILOBREAK_BROKER_DIR to the broker's directory, or run"
                " `silobreak broker-sync --watch` beside it"
            )
        logger.debug("%s not accepted yet (%s)", device_id, refusal)
        time.sleep(_PROBE_EVERY_S)
