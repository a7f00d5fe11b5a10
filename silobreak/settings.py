"""Process settings: environment variables first, then silobreak.toml, then defaults.

The shell maps them once onto each package's own typed config (`ingest_config`,
`streams_config`, `mirror_config`); no package reads the settings model itself.
"""

from __future__ import annotations

import os
import re
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from silobreak.errors import SilobreakError

if TYPE_CHECKING:
    from ingest.service import IngestConfig
    from store.mirror import MirrorConfig
    from streams.gateway import StreamsConfig

_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class SettingsError(SilobreakError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def parse_duration(value: object) -> timedelta:
    """`250ms`, `30s`, `15m`, `12h`, `400d` (or a number of seconds) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match:
            return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    raise ValueError(f"{value!r} is not a duration such as 250ms, 30s, 15m, 12h or 400d")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _database_url(value: object) -> object:
    # Imported here: the store package is not loaded by commands that never touch it.
    from store.primary import writable_url  # noqa: PLC0415

    return writable_url(value) if isinstance(value, str) else value


# A libpq URL; one naming several hosts (every member of a replicated cluster) reaches the
# primary, wherever it is after a failover (store.primary).
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]


class Settings(BaseSettings):
    """Everything a silobreak process is configured with."""

    model_config = SettingsConfigDict(env_prefix="SILOBREAK_", frozen=True, extra="forbid")

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    # Several hosts for a replicated cluster: `postgresql://u@db1:5432,db2:5432,db3:5432/city`
    # (docs/scaling.md, Database tier); `target_session_attrs=read-write` is added if unset.
    database_url: DatabaseUrl = "postgresql://postgres@127.0.0.1:5432/silobreak"
    api_url: str = "http://127.0.0.1:8080"
    store_backend: Literal["auto", "plain", "timescale"] = "auto"
    # An operator's device catalog (TOML, the format of devices/catalog.toml): its types are
    # added to the shipped ones. `silobreak migrate` creates their tables and records the
    # catalog in the database; ingest and the streams API read it from there.
    catalog: Path | None = None

    ingest_client_id: str = Field(default_factory=lambda: f"ingest-{socket.gethostname()}")
    # Ingestors subscribe as members of this shared subscription ($share/<group>/...), over
    # MQTT 3.1.1 too. Empty: a plain subscription, for a broker without shared subscriptions
    # (RabbitMQ 3.10 reads `$share/...` as a topic no device publishes to), and one ingestor.
    ingest_share_group: str = "ingest"
    # AMQP URLs of RabbitMQ nodes, comma-separated (`amqp://user:pass@host:5672/vhost`): when
    # set, ingestors consume the share group's durable quorum queue over AMQP 0-9-1, as
    # competing consumers, instead of subscribing over MQTT (see docs/scaling.md).
    ingest_amqp_url: str = ""
    # A batch of 5,000 messages amortises COPY's per-statement cost (~1 ms) to ~0.2 µs each.
    ingest_batch_size: int = Field(default=5000, ge=1, le=100_000)
    # Bounds the latency a message waits for its batch at low rates.
    ingest_batch_interval: Duration = timedelta(milliseconds=100)
    # Unacknowledged messages the broker may send before it waits: throughput is this window
    # divided by commit latency, and it bounds the ingestor's memory (window x max payload).
    ingest_receive_maximum: int = Field(default=20_000, ge=1, le=65_535)
    # How long the broker keeps the ingestor's session (and queues for it) while it is away.
    ingest_session_expiry: Duration = timedelta(days=1)
    ingest_max_payload: int = Field(default=64 * 1024, ge=1)
    ingest_max_future: Duration = timedelta(minutes=5)
    ingest_max_age: Duration = timedelta(days=7)
    # How often ingest checks the registry for devices added, changed or decommissioned.
    registry_refresh: Duration = timedelta(seconds=2)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65_535)

    # Where `silobreak streams` serves the HTTP API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65_535)
    # How long a new API token lives unless `--ttl` says otherwise: a quarter, so a forgotten
    # token dies on its own within a season.
    token_ttl: Duration = timedelta(days=90)
    # The broker's directory (password and ACL files, pid file; see `silobreak broker-config`).
    # When set, every provisioning command rewrites those files and reloads the broker; when
    # not, `silobreak broker-sync` run where the broker runs does it.
    broker_dir: Path | None = None

    # -- streams: governed sharing (grants, live delivery, webhooks); see docs/streams.md --
    # Personal data (household meters) leaves only as aggregates pooled over at least this
    # many devices: with five, no one household's readings can be told from the pool.
    streams_min_pool: int = Field(default=5, ge=2)
    # How often a streams gateway polls the store for new commits: delivery waits half of it
    # on average, and revocation or expiry stops live delivery within one poll (< 2 s).
    streams_poll_interval: Duration = timedelta(milliseconds=250)
    # Live aggregates are sent this long after their bucket closes, so readings still in the
    # ingest pipeline (its 100 ms batches and commit) are counted in them.
    streams_aggregate_grace: Duration = timedelta(seconds=5)
    # Where webhooks may point: URL prefixes such as `https://hooks.city.example/`
    # (scheme, host, port and path prefix must all match); empty: webhooks are refused.
    streams_webhook_allow: list[str] = Field(default_factory=list)
    # Webhook retries: the first delay, doubled each time (with jitter) up to the cap; a
    # batch still refused after `give_up` stops the subscription (nothing is skipped).
    streams_webhook_backoff: Duration = timedelta(milliseconds=500)
    streams_webhook_backoff_max: Duration = timedelta(seconds=60)
    streams_webhook_give_up: Duration = timedelta(days=1)
    # The bearer token `silobreak subscribe` and `silobreak grants` send to SILOBREAK_API_URL.
    api_token: str | None = None

    # -- store upkeep, backfill and the InfluxDB mirror; see docs/store.md -----------------
    # How often `silobreak maintain --watch` refreshes the plain backend's rollups and
    # applies retention: rollups lag raw rows by at most this (reads above the watermark
    # aggregate raw rows meanwhile), and refreshing 30 s of a city's writes takes a few ms.
    maintenance_interval: Duration = timedelta(seconds=30)
    # Reading times newer than this may still be in flight when a refresh runs; plain reads
    # aggregate them from raw rows (TimescaleDB's 1-minute policy has the same end_offset).
    rollup_settle: Duration = timedelta(minutes=2)
    # "unnest" only for servers without COPY FROM STDIN (the PGlite TimescaleDB test server).
    store_insert_mode: Literal["copy", "unnest"] = "copy"
    # Messages per bulk-load transaction: COPY's per-statement cost vanishes at this size,
    # and a failed batch is still cheap to redo.
    backfill_batch_size: int = Field(default=50_000, ge=1, le=1_000_000)
    # The InfluxDB 2 mirror, off while influx_url is unset. `{service}` in the bucket name is
    # the owning service: a bucket per service, so InfluxDB's own retention and tokens can
    # follow each service too.
    influx_url: str | None = None
    influx_token: str = ""
    influx_org: str = "silobreak"
    influx_bucket: str = "silobreak-{service}"
    # Points per write request: InfluxDB's recommended batch size.
    influx_batch_size: int = Field(default=5000, ge=1, le=100_000)
    # How often the mirror looks for newly committed rows once it has caught up.
    influx_interval: Duration = timedelta(seconds=1)
    # One write request's limit; a slower server counts as down and the batch is retried.
    influx_timeout: Duration = timedelta(seconds=10)

    # -- reliability: dead connections and dead letters; see docs/reliability.md ----------
    # A database call (connect, batch, registry or presence query) not answered by then
    # fails and is retried on a new connection: a silent link must not hang ingest forever.
    store_timeout: Duration = timedelta(seconds=15)
    # How long dead letters are kept; `silobreak rejects expire` deletes older ones.
    rejects_retention: Duration = timedelta(days=30)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - signature fixed by pydantic-settings
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("SILOBREAK_CONFIG", "silobreak.toml"))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))


def load_settings(**overrides: Any) -> Settings:
    """Load once at a process's entry point; a bad value becomes one SettingsError line."""
    config = os.environ.get("SILOBREAK_CONFIG")
    if config is not None and not Path(config).is_file():
        raise SettingsError(f"SILOBREAK_CONFIG names {config!r}, which is not a file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"SILOBREAK_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise SettingsError(f"bad setting: {problems}") from None
    except ValueError as exc:  # a malformed silobreak.toml
        raise SettingsError(f"cannot read settings: {exc}") from None


# The packages' configs are imported where they are made: a command that needs no ingestor
# or gateway (most of them, and `--help`) does not import one.


def ingest_config(s: Settings) -> IngestConfig:
    """The ingestor's config."""
    from ingest.service import IngestConfig  # noqa: PLC0415

    return IngestConfig(
        mqtt_url=s.mqtt_url,
        database_url=s.database_url,
        client_id=s.ingest_client_id,
        share_group=s.ingest_share_group,
        amqp_urls=tuple(u.strip() for u in s.ingest_amqp_url.split(",") if u.strip()),
        batch_size=s.ingest_batch_size,
        batch_interval=s.ingest_batch_interval,
        receive_maximum=s.ingest_receive_maximum,
        session_expiry=s.ingest_session_expiry,
        max_payload=s.ingest_max_payload,
        max_age=s.ingest_max_age,
        max_future=s.ingest_max_future,
        registry_refresh=s.registry_refresh,
        store_timeout=s.store_timeout,
    )


def streams_config(s: Settings) -> StreamsConfig:
    """A streams gateway's config (the API's pool needs only `database_url` of it)."""
    from retries import Policy  # noqa: PLC0415
    from streams.gateway import StreamsConfig  # noqa: PLC0415

    return StreamsConfig(
        database_url=s.database_url,
        mqtt_url=s.mqtt_url,
        min_pool=s.streams_min_pool,
        poll_interval=s.streams_poll_interval,
        aggregate_grace=s.streams_aggregate_grace,
        webhook_allow=tuple(s.streams_webhook_allow),
        webhook_retry=Policy(
            first=s.streams_webhook_backoff.total_seconds(),
            cap=s.streams_webhook_backoff_max.total_seconds(),
            give_up=s.streams_webhook_give_up.total_seconds(),
        ),
    )


def mirror_config(s: Settings, *, from_beginning: bool = True) -> MirrorConfig:
    """The InfluxDB mirror's config; a StoreError when no mirror is configured."""
    from store.errors import StoreError  # noqa: PLC0415
    from store.mirror import MirrorConfig  # noqa: PLC0415

    if s.influx_url is None:
        raise StoreError("no mirror configured: set SILOBREAK_INFLUX_URL (and _TOKEN, _ORG)")
    return MirrorConfig(
        url=s.influx_url,
        token=s.influx_token,
        org=s.influx_org,
        bucket=s.influx_bucket,
        batch_size=s.influx_batch_size,
        interval=s.influx_interval,
        timeout=s.influx_timeout,
        from_beginning=from_beginning,
    )
