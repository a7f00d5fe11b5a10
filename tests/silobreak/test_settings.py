"""The shell maps the settings once onto each package's typed config."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from ingest.service import IngestConfig
from retries import Policy
from silobreak.settings import (
    Settings,
    SettingsError,
    ingest_config,
    load_settings,
    mirror_config,
    streams_config,
)
from store.errors import StoreError
from store.mirror import MirrorConfig
from streams.gateway import StreamsConfig


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test passes: no SILOBREAK_* variable, no silobreak.toml."""
    for name in [n for n in os.environ if n.startswith("SILOBREAK_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_streams_config_carries_every_streams_setting_and_the_webhook_policy_in_seconds() -> None:
    s = Settings(
        database_url="postgresql://db/x",
        mqtt_url="mqtt://broker:1884",
        streams_min_pool=7,
        streams_poll_interval=timedelta(milliseconds=100),
        streams_aggregate_grace=timedelta(seconds=2),
        streams_webhook_allow=["https://hooks.example/"],
        streams_webhook_backoff=timedelta(milliseconds=50),
        streams_webhook_backoff_max=timedelta(seconds=3),
        streams_webhook_give_up=timedelta(hours=1),
    )
    assert streams_config(s) == StreamsConfig(
        database_url="postgresql://db/x",
        mqtt_url="mqtt://broker:1884",
        min_pool=7,
        poll_interval=timedelta(milliseconds=100),
        aggregate_grace=timedelta(seconds=2),
        webhook_allow=("https://hooks.example/",),
        webhook_retry=Policy(first=0.05, cap=3.0, give_up=3600.0),
    )


def test_default_settings_give_the_packages_their_own_defaults() -> None:
    s = Settings(ingest_client_id="ingest-a")
    assert ingest_config(s) == IngestConfig(
        mqtt_url=s.mqtt_url, database_url=s.database_url, client_id="ingest-a"
    )
    assert streams_config(s) == StreamsConfig(database_url=s.database_url, mqtt_url=s.mqtt_url)
    with_influx = Settings(influx_url="http://influx:8086")
    assert mirror_config(with_influx) == MirrorConfig(url="http://influx:8086")


def test_mirror_config_without_an_influx_url_says_which_setting_to_set() -> None:
    with pytest.raises(StoreError, match="SILOBREAK_INFLUX_URL"):
        mirror_config(Settings(influx_url=None))
    assert not mirror_config(
        Settings(influx_url="http://influx:8086"), from_beginning=False
    ).from_beginning


def test_a_database_url_naming_several_hosts_asks_for_the_primary() -> None:
    several = "postgresql://postgres@db1:5432,db2:5432,db3:5432/city"
    assert Settings(database_url=several).database_url == (
        f"{several}?target_session_attrs=read-write"
    )
    one = "postgresql://postgres@db1:5432/city"
    assert Settings(database_url=one).database_url == one


def test_a_database_url_with_a_port_per_host_but_one_missing_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SILOBREAK_DATABASE_URL", "host=db1,db2,db3 port=5432,5433 dbname=city")
    with pytest.raises(SettingsError, match=r"SILOBREAK_DATABASE_URL: .*3 host.* 2 ports"):
        load_settings()


def test_an_amqp_url_list_becomes_the_nodes_ingest_tries_in_turn() -> None:
    s = Settings(ingest_amqp_url=" amqp://u:p@rmq1:5672/ ,amqp://u:p@rmq2:5672/,, ")
    assert ingest_config(s).amqp_urls == ("amqp://u:p@rmq1:5672/", "amqp://u:p@rmq2:5672/")
    assert ingest_config(Settings()).amqp_urls == ()  # MQTT, as before
