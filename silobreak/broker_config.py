"""Mosquitto configuration for silobreak: listeners, limits sized for ingest, persistence, auth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from silobreak.broker_sync import BrokerFiles, write_private
from silobreak.settings import SettingsError

Profile = Literal["dev", "deploy"]
PROFILES: Final = ("dev", "deploy")
PLAIN_PORT: Final = 1883
TLS_PORT: Final = 8883
CLIENTS_TLS_PORT: Final = 8884


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """What `silobreak broker-config` is asked for."""

    profile: Profile
    directory: Path  # password, ACL and pid files; in dev also persistence and log
    plain_bind: str = "127.0.0.1"
    plain_port: int = PLAIN_PORT
    tls_bind: str | None = None  # None: 127.0.0.1 in dev, every interface in deploy
    tls_port: int = TLS_PORT
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    run_as: str | None = None  # Mosquitto's `user` (who it becomes when started as root)
    persistence_dir: Path | None = None  # default: `directory`
    clients_port: int = CLIENTS_TLS_PORT  # TLS, next to the device listener: people's principals
    # Plain listeners on `plain_bind` for devices and for people's principals (development,
    # or a private network); None: none.
    device_plain_port: int | None = None
    clients_plain_port: int | None = None

    @property
    def files(self) -> BrokerFiles:
        return BrokerFiles(self.directory)

    @property
    def tls(self) -> bool:
        return self.certfile is not None

    def check(self) -> None:
        """Raise SettingsError for a configuration the broker would refuse or should not run."""
        given = [f is not None for f in (self.cafile, self.certfile, self.keyfile)]
        if any(given) and not all(given):
            raise SettingsError("TLS needs all of --cafile, --certfile and --keyfile")
        if self.profile == "deploy" and not self.tls:
            raise SettingsError(
                "the deploy profile needs a TLS certificate for the device listener: give "
                "--cafile, --certfile and --keyfile (or use --profile dev)"
            )
        for path in (self.cafile, self.certfile, self.keyfile):
            if path is not None and not path.is_file():
                raise SettingsError(f"{path} is not a file")
        ports = [self.plain_port, self.device_plain_port, self.clients_plain_port]
        if self.tls:
            ports += [self.tls_port, self.clients_port]
        given_ports = [p for p in ports if p is not None]
        if len(set(given_ports)) != len(given_ports):
            raise SettingsError("every listener needs a port of its own")


def render(cfg: BrokerConfig) -> str:
    """The whole mosquitto.conf."""
    d = cfg.directory.resolve()
    files = BrokerFiles(d)
    out = [
        f"# Mosquitto 2.0 for silobreak ({cfg.profile} profile): `silobreak broker-config`.",
        "",
        "# Who may connect, and what each may publish and read: written from the registry by",
        "# `silobreak broker-sync` (and by every provisioning command when SILOBREAK_BROKER_DIR",
        "# names this directory), then applied by SIGHUP without a restart.",
        "per_listener_settings true",
        f"pid_file {files.pid_file}",
    ]
    if cfg.run_as:
        out.append(f"user {cfg.run_as}")
    out += [
        "",
        "# Sized for ingest's acknowledge-after-commit: a v5 client's Receive Maximum sets how",
        "# many unacknowledged publishes it is sent; this covers v3 clients and v5 clients that",
        "# send none (paho), and is advertised to publishers as the CONNACK Receive Maximum",
        "# (the default 20 starves ingest; 0 and 65535 both mean no limit and reuse packet ids).",
        "max_inflight_messages 65534",
        "# Queued for a subscriber behind its in-flight window (an ingestor or its store that is",
        "# down); past either limit QoS 1 messages are dropped silently (default 1000).",
        "# 1M is ~15 minutes of a 1k msg/s city.",
        "max_queued_messages 1000000",
        "# 1M telemetry payloads of up to ~200 B; a stuck client with big payloads is cut at",
        "# 256 MiB instead of taking the broker's memory.",
        "max_queued_bytes 268435456",
        "# A client absent for a day is gone: its session and queue are freed.",
        "persistent_client_expiration 1d",
        "# PUBACKs and small publishes go out at once, not after Nagle's delay.",
        "set_tcp_nodelay true",
        "",
        "persistence true",
        f"persistence_location {(cfg.persistence_dir or d).resolve()}/",
        "# Seconds between snapshots of the in-memory store. A SIGKILL or crash of the broker",
        "# loses what it acknowledged since the last one and had not yet handed to an ingestor:",
        "# nearly nothing while ingest keeps up, up to this many seconds of traffic while it is",
        "# down or behind. Each rewrites the whole file (~0.75 s for 1M queued messages here);",
        "# autosave_on_changes would do that every N messages (docs/reliability.md).",
        "autosave_interval 10",
        "",
    ]
    if cfg.profile == "dev":
        out += [f"log_dest file {d / 'mosquitto.log'}"]
    else:
        out += ["log_dest stdout"]
    out += [
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "connection_messages true",
        "",
        "# Who may connect, and what each may publish and read: written from the registry by",
        "# `silobreak broker-sync` (and by every provisioning command when SILOBREAK_BROKER_DIR",
        "# names this directory), then applied by SIGHUP without a restart. Each listener has",
        "# files of its own: an account can log in only where it belongs.",
        "",
        "# Platform listener, plain: the platform's components (ingest, streams) only; each",
        "# ingestor picks its own stable client id. Keep it on loopback or a private network.",
        f"listener {cfg.plain_port} {cfg.plain_bind}",
        *_auth(files, "platform", own_ids=False),
    ]
    if cfg.device_plain_port is not None:
        out += [
            "",
            "# Device listener, plain (development or a private network): devices only.",
            f"listener {cfg.device_plain_port} {cfg.plain_bind}",
            *_auth(files, "devices", own_ids=True),
        ]
    if cfg.clients_plain_port is not None:
        out += [
            "",
            "# Clients listener, plain: services, teams and the coordinator.",
            f"listener {cfg.clients_plain_port} {cfg.plain_bind}",
            *_auth(files, "clients", own_ids=True),
        ]
    if cfg.tls:
        bind = cfg.tls_bind if cfg.tls_bind is not None else _default_tls_bind(cfg.profile)
        tls = [
            f"cafile {_abs(cfg.cafile)}",
            f"certfile {_abs(cfg.certfile)}",
            f"keyfile {_abs(cfg.keyfile)}",
            "tls_version tlsv1.2",
        ]
        out += [
            "",
            "# Device listener, TLS: devices only.",
            f"listener {cfg.tls_port}" + (f" {bind}" if bind else ""),
            *tls,
            *_auth(files, "devices", own_ids=True),
            "",
            "# Clients listener, TLS: services, teams and the coordinator.",
            f"listener {cfg.clients_port}" + (f" {bind}" if bind else ""),
            *tls,
            *_auth(files, "clients", own_ids=True),
        ]
    return "\n".join(out) + "\n"


def write(cfg: BrokerConfig, output: Path) -> None:
    """Write mosquitto.conf to `output` and create empty auth files the broker can start with."""
    cfg.check()
    cfg.directory.mkdir(parents=True, exist_ok=True)
    output.write_text(render(cfg), encoding="utf-8")
    files = cfg.files
    for path in files.all_files():
        if not path.exists():
            write_private(path, "# Empty until `silobreak broker-sync` writes it.\n")


def _auth(files: BrokerFiles, listener: str, *, own_ids: bool) -> list[str]:
    passwords, acl = files.listener(listener)
    out = ["allow_anonymous false", f"password_file {passwords}", f"acl_file {acl}"]
    if own_ids:
        # The client id is replaced by the user name (a device id, or `kind~name`, which no
        # device id can be): no account can take over another's session, a component's
        # included, or knock it off by reusing its client id.
        out.append("use_username_as_clientid true")
    return out


def _default_tls_bind(profile: Profile) -> str:
    return "127.0.0.1" if profile == "dev" else ""


def _abs(path: Path | None) -> Path:
    assert path is not None
    return path.resolve()
