"""Broker accounts and what each may publish and read: Mosquitto password and ACL file text."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from devices.credentials import is_broker_hash
from devices.errors import DevicesError
from devices.topics import COMMANDS, DEVICE_ID_RE, EVENTS, STATUS, TELEMETRY

# Who can ask things of the platform. Services own devices; data teams consume what is granted
# to them; the coordinator (the city's data office) sees everything and manages principals;
# components are the platform's own processes (ingest, streams).
SERVICE: Final = "service"
TEAM: Final = "team"
COORDINATOR: Final = "coordinator"
COMPONENT: Final = "component"
PRINCIPAL_KINDS: Final = (SERVICE, TEAM, COORDINATOR, COMPONENT)
# The same rule as a device's owning service, so a service principal can be named after it.
PRINCIPAL_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")
# A principal's broker user name is `kind~name`: `~` cannot occur in a device id, so no
# principal can ever hold a device's user name, nor a device a principal's.
_USER_SEP: Final = "~"
# Where the streams gateway delivers live data over MQTT: `deliveries/{principal}/...`,
# readable by that principal alone. (The streams package owns what goes below it.)
DELIVERIES: Final = "deliveries"
# What the platform's own components may do; a component not named here gets nothing.
COMPONENT_TOPICS: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    "ingest": (
        ("read", f"devices/+/{TELEMETRY}"),
        ("read", f"devices/+/{STATUS}"),
        ("read", f"devices/+/{EVENTS}"),
    ),
    "streams": (
        ("read", f"devices/+/{TELEMETRY}"),
        ("read", f"devices/+/{STATUS}"),
        ("read", f"devices/+/{EVENTS}"),
        ("write", f"{DELIVERIES}/#"),
    ),
}
# Every device, by its own user name (%u, which is its device id): publish its telemetry,
# events and status, read its commands; nothing else. Mosquitto 2.0's ACL file checks reads
# when a message is delivered, not when a filter is subscribed: a device may subscribe to
# another device's commands, but no message of it is ever delivered.
DEVICE_PATTERNS: Final = (
    ("write", f"devices/%u/{TELEMETRY}"),
    ("write", f"devices/%u/{EVENTS}"),
    ("write", f"devices/%u/{STATUS}"),
    ("read", f"devices/%u/{COMMANDS}"),
)


def principal_username(kind: str, name: str) -> str:
    """The broker user name of a principal: `service~lighting`, `component~ingest`, ..."""
    return f"{kind}{_USER_SEP}{name}"


def check_principal(kind: str, name: str) -> None:
    """Raise DevicesError when `kind` or `name` cannot be a principal's."""
    if kind not in PRINCIPAL_KINDS:
        raise DevicesError(f"unknown principal kind {kind!r} (one of {', '.join(PRINCIPAL_KINDS)})")
    if PRINCIPAL_NAME_RE.fullmatch(name) is None:
        raise DevicesError(f"principal name {name!r} must match [a-z][a-z0-9_-]{{0,62}}")


@dataclass(frozen=True, slots=True)
class PrincipalAccount:
    """A principal's broker account and its devices now: for a service, the ones it owns; for
    a coordinator, its organisation's."""

    name: str
    kind: str
    password_hash: str
    owned_devices: Sequence[str] = field(default=())

    @property
    def username(self) -> str:
        return principal_username(self.kind, self.name)


@dataclass(frozen=True, slots=True)
class BrokerAuth:
    """Everything the broker's password and ACL files are made from."""

    devices: Sequence[tuple[str, str]]  # (device_id, password hash) of live credentials
    principals: Sequence[PrincipalAccount]

    def password_file(self) -> str:
        return render_password_file(
            [(p.username, p.password_hash) for p in self.principals] + list(self.devices)
        )

    def acl_file(self) -> str:
        return render_acl_file(self.principals)

    def listener_files(self) -> dict[str, tuple[str, str]]:
        """Per listener (platform, clients, devices): its password and ACL file text.

        Each listener admits its own accounts only: the platform's components on the platform
        listener (free client ids: one per ingestor), devices and people's principals on
        listeners whose client id is the user name, so no account can take a component's
        session or another account's."""
        components = [p for p in self.principals if p.kind == COMPONENT]
        clients = [p for p in self.principals if p.kind != COMPONENT]
        return {
            "platform": (
                render_password_file((p.username, p.password_hash) for p in components),
                render_acl_file(components, devices=False),
            ),
            "clients": (
                render_password_file((p.username, p.password_hash) for p in clients),
                render_acl_file(clients, devices=False),
            ),
            "devices": (render_password_file(self.devices), render_acl_file([])),
        }


def render_password_file(accounts: Iterable[tuple[str, str]]) -> str:
    """`user:$7$...` lines, as mosquitto_passwd writes them."""
    lines = ["# Written by silobreak from its registry; changes made here are overwritten."]
    for username, password_hash in accounts:
        if ":" in username or "\n" in username or not is_broker_hash(password_hash):
            raise DevicesError(f"broker account {username!r} cannot go into a password file")
        lines.append(f"{username}:{password_hash}")
    return "\n".join(lines) + "\n"


def render_acl_file(principals: Sequence[PrincipalAccount], *, devices: bool = True) -> str:
    """Per-principal topic rules, then (with `devices`) the patterns every device account gets."""
    out = ["# Written by silobreak from its registry; changes made here are overwritten.", ""]
    for p in principals:
        out.append(f"user {p.username}")
        out += [f"topic {access} {t}" for access, t in _principal_topics(p)]
        out.append("")
    if devices:
        out.append("# Devices: each under its own id, which is its user name.")
        out += [f"pattern {access} {t}" for access, t in DEVICE_PATTERNS]
    return "\n".join(out) + "\n"


def _principal_topics(p: PrincipalAccount) -> list[tuple[str, str]]:
    if p.kind == COMPONENT:
        return list(COMPONENT_TOPICS.get(p.name, ()))
    own = [("read", f"{DELIVERIES}/{p.name}/#")]
    if p.kind == COORDINATOR:
        # Its organisation's devices, one line each: never another organisation's topics.
        return own + [
            ("read", f"devices/{d}/#")
            for d in p.owned_devices
            if DEVICE_ID_RE.fullmatch(d) is not None
        ]
    if p.kind == SERVICE:
        # A service commands its own devices and nobody else's. One line per device: Mosquitto
        # scans a user's lines only for that user's own publishes and deliveries.
        return own + [
            ("write", f"devices/{d}/{COMMANDS}")
            for d in p.owned_devices
            if DEVICE_ID_RE.fullmatch(d) is not None
        ]
    return own
