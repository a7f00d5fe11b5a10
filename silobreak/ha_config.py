"""Patroni configuration for silobreak's database tier: N PostgreSQL members, etcd, sync mode.

One file per member (`silobreak ha-config`); Patroni 3.0 (Debian 12's `patroni`) reads it.
The cluster runs in `synchronous_mode_strict`: a commit returns once one standby has the
WAL, and with no standby left the primary stops taking writes instead of committing alone,
so the standby that takes over after a failover has every commit ingest has acknowledged.
The components reach it with one multi-host URL (`database_url`), which follows the primary.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from silobreak.settings import SettingsError

# Seconds. A dead primary's leader key expires within `ttl`, then a replica takes over;
# Patroni needs loop_wait + 2 * retry_timeout <= ttl. Patroni's defaults are 30/10/10.
DEFAULT_TTL: Final = 30
DEFAULT_LOOP_WAIT: Final = 10
DEFAULT_RETRY_TIMEOUT: Final = 10
PG_PORT: Final = 5432
API_PORT: Final = 8008
# A standby further behind than this (bytes of WAL) is not promoted automatically.
MAX_LAG_ON_FAILOVER: Final = 1024 * 1024

Auth = Literal["scram", "trust"]


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    host: str
    pg_port: int
    api_port: int
    data_dir: Path


@dataclass(frozen=True)
class HaConfig:
    """What `silobreak ha-config` is asked for."""

    scope: str
    members: tuple[Member, ...]
    etcd_hosts: tuple[str, ...]  # host:port of each etcd member's client URL
    bin_dir: Path
    # "scram": passwords for the superuser and replication roles, logins from anywhere
    # (restrict pg_hba to your network); "trust": no passwords, 127.0.0.1 only (development).
    auth: Auth = "scram"
    superuser_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    replication_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ttl: int = DEFAULT_TTL
    loop_wait: int = DEFAULT_LOOP_WAIT
    retry_timeout: int = DEFAULT_RETRY_TIMEOUT
    parameters: Mapping[str, Any] = field(default_factory=dict)  # more postgresql.conf
    # The address PostgreSQL and the REST API listen on; None: the member's own host (in a
    # container, 0.0.0.0: the member's name resolves to an address the container may not bind).
    bind: str | None = None

    def check(self) -> None:
        """Raise SettingsError for a cluster Patroni would refuse or that cannot be safe."""
        if len(self.members) < 2:
            raise SettingsError("a synchronous cluster needs at least 2 members (3 advised)")
        if not self.etcd_hosts:
            raise SettingsError("name the etcd members (--etcd host:port, once per member)")
        if self.loop_wait + 2 * self.retry_timeout > self.ttl:
            raise SettingsError(
                f"loop_wait + 2 x retry_timeout ({self.loop_wait} + 2 x {self.retry_timeout})"
                f" must not exceed ttl ({self.ttl})"
            )
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise SettingsError(f"member names repeat: {', '.join(names)}")
        addresses = [(m.host, p) for m in self.members for p in (m.pg_port, m.api_port)]
        if len(set(addresses)) != len(addresses):
            raise SettingsError("two members (or a member's two ports) share a host and port")

    def database_url(self, dbname: str = "silobreak", user: str = "postgres") -> str:
        """The URL the components are given: every member, the primary taken."""
        hosts = ",".join(f"{m.host}:{m.pg_port}" for m in self.members)
        return f"postgresql://{user}@{hosts}/{dbname}?target_session_attrs=read-write"

    def member_config(self, member: Member) -> dict[str, Any]:
        """Patroni's configuration of one member."""
        trust = self.auth == "trust"
        where = "127.0.0.1/32" if trust else "0.0.0.0/0"
        method = "trust" if trust else "scram-sha-256"
        superuser: dict[str, str] = {"username": "postgres"}
        replication: dict[str, str] = {"username": "replicator"}
        if not trust:
            superuser["password"] = self.superuser_password
            replication["password"] = self.replication_password
        return {
            "scope": self.scope,
            "name": member.name,
            "restapi": {
                "listen": f"{self.bind or member.host}:{member.api_port}",
                "connect_address": f"{member.host}:{member.api_port}",
            },
            "etcd3": {"hosts": list(self.etcd_hosts)},
            "bootstrap": {
                "dcs": {
                    "ttl": self.ttl,
                    "loop_wait": self.loop_wait,
                    "retry_timeout": self.retry_timeout,
                    "maximum_lag_on_failover": MAX_LAG_ON_FAILOVER,
                    "synchronous_mode": True,
                    "synchronous_mode_strict": True,
                    "synchronous_node_count": 1,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_log_hints": "on",
                            "timezone": "UTC",
                            "log_timezone": "UTC",
                            **self.parameters,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"{self.bind or member.host}:{member.pg_port}",
                "connect_address": f"{member.host}:{member.pg_port}",
                "data_dir": str(member.data_dir),
                "bin_dir": str(self.bin_dir),
                "pgpass": str(member.data_dir.parent / f"{member.name}.pgpass"),
                "authentication": {"superuser": superuser, "replication": replication},
                "pg_hba": [
                    "local all all trust" if trust else "local all postgres peer",
                    f"host all all {where} {method}",
                    f"host replication replicator {where} {method}",
                ],
            },
        }


def members(
    count: int, hosts: Sequence[str], pg_port: int, api_port: int, data_root: Path
) -> tuple[Member, ...]:
    """`count` members named pg0, pg1, ...; with fewer hosts than members, they take turns
    and members sharing a host get the next ports (pg_port + i, api_port + i)."""
    if count < 1:
        raise SettingsError("--members must be at least 1")
    hosts = list(hosts) or ["127.0.0.1"]
    return tuple(
        Member(
            f"pg{i}",
            hosts[i % len(hosts)],
            pg_port + (i if len(hosts) < count else 0),
            api_port + (i if len(hosts) < count else 0),
            data_root / f"pg{i}",
        )
        for i in range(count)
    )


def render(config: Mapping[str, Any], indent: int = 0) -> str:
    """YAML of a configuration made of mappings, lists, strings, numbers and booleans
    (strings in JSON's double-quoted form, which YAML reads the same)."""
    lines: list[str] = []
    pad = " " * indent
    for key, value in config.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key}:")
            lines.append(render(value, indent + 2))
        elif isinstance(value, list):
            lines.append(f"{pad}{key}:")
            for item in value:
                if isinstance(item, Mapping):
                    first, *rest = render(item, indent + 4).splitlines()
                    lines.append(f"{pad}  - {first.lstrip()}")
                    lines.extend(rest)
                else:
                    lines.append(f"{pad}  - {_scalar(item)}")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(lines)


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def write(config: HaConfig, directory: Path) -> list[Path]:
    """One `<member>.yml` per member in `directory`, not world-readable (passwords)."""
    from silobreak.broker_sync import write_private  # noqa: PLC0415

    config.check()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for member in config.members:
        path = directory / f"{member.name}.yml"
        write_private(path, render(config.member_config(member)) + "\n")
        written.append(path)
    return written
