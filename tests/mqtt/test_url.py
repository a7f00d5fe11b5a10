"""Broker URLs: the one parser every package uses, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt import DEFAULT_PORT, DEFAULT_TLS_PORT, BadMqttUrl, MqttError, MqttUrl, redact

ROOT = Path(__file__).resolve().parents[2]


def test_url_parses_credentials_port_and_tls() -> None:
    url = MqttUrl.parse("mqtts://ingest:p%40ss%3Aw@broker.city.example")
    assert url == MqttUrl("broker.city.example", 8883, "ingest", "p@ss:w", tls=True)
    assert "p@ss" not in repr(url)
    assert MqttUrl.parse("mqtt://127.0.0.1:1884") == MqttUrl("127.0.0.1", 1884)


@pytest.mark.parametrize(
    ("url", "port", "tls"),
    [
        ("mqtt://broker", DEFAULT_PORT, False),
        ("mqtts://broker", DEFAULT_TLS_PORT, True),
        ("MQTTS://broker/", 8883, True),
        ("mqtt://broker:8883", 8883, False),
        ("mqtts://broker:1883", 1883, True),
    ],
)
def test_url_without_a_port_gets_the_schemes_default(url: str, port: int, tls: bool) -> None:
    parsed = MqttUrl.parse(url)
    assert (parsed.host, parsed.port, parsed.tls) == ("broker", port, tls)


def test_url_without_credentials_has_none_and_empty_ones_count_as_none() -> None:
    assert MqttUrl.parse("mqtt://h").username is None
    assert MqttUrl.parse("mqtt://h").password is None
    assert MqttUrl.parse("mqtt://sim@h") == MqttUrl("h", 1883, "sim", None)
    assert MqttUrl.parse("mqtt://sim:@h") == MqttUrl("h", 1883, "sim", None)
    assert MqttUrl.parse("mqtt://@h") == MqttUrl("h", 1883)


@pytest.mark.parametrize(
    ("url", "protocol"),
    [
        ("mqtt://h", "5"),
        ("mqtt://h?protocol=5", "5"),
        ("mqtt://h/?protocol=5.0", "5"),
        ("mqtt://u:p@h:1884?protocol=3.1.1", "3.1.1"),
        ("mqtts://h?protocol=3.1.1", "3.1.1"),
    ],
)
def test_url_names_the_protocol_version_and_mqtt_5_is_the_default(url: str, protocol: str) -> None:
    parsed = MqttUrl.parse(url)
    assert parsed.protocol == protocol
    assert parsed.v5 is (protocol == "5")


def test_str_keeps_a_3_1_1_protocol_so_that_it_parses_back_the_same() -> None:
    url = MqttUrl.parse("mqtt://u:p@h:1884?protocol=3.1.1")
    assert str(url) == "mqtt://u@h:1884?protocol=3.1.1"
    assert MqttUrl.parse(str(url)) == MqttUrl("h", 1884, "u", protocol="3.1.1")
    assert str(MqttUrl.parse("mqtt://h:1?protocol=5")) == "mqtt://h:1"


def test_ipv6_host_is_unbracketed_and_named_with_brackets() -> None:
    url = MqttUrl.parse("mqtt://[::1]:1884")
    assert url.host == "::1"
    assert url.broker == "[::1]:1884"


def test_str_names_scheme_user_host_and_port_but_never_the_password() -> None:
    url = MqttUrl.parse("mqtts://component~streams:s3cret@broker.example")
    assert str(url) == "mqtts://component~streams@broker.example:8883"
    assert str(MqttUrl.parse("mqtt://h:1")) == "mqtt://h:1"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://u:secret@host", "mqtt://"),
        ("ws://u:secret@host:9001", "mqtts://"),
        ("u:secret@host:1883", "mqtt://"),
        ("", "mqtt://"),
        ("mqtt://u:secret@:1883", "no host"),
        ("mqtt://u:secret@host:99999", "1 to 65535"),
        ("mqtt://u:secret@host:0", "1 to 65535"),
        ("mqtt://u:secret@host:port", "1 to 65535"),
        ("mqtt://u:secret@host:1883/x", "path"),
        ("mqtt://u:secret@host:1883?x=1", "query"),
        ("mqtt://u:secret@host:1883?protocol=3.1.1&x=1", "query"),
        ("mqtt://u:secret@host:1883?protocol=4", "protocol=3.1.1"),
        ("mqtt://u:secret@host:1883?protocol=3.1", "protocol=3.1.1"),
        ("mqtt://u:secret@host:1883?protocol=", "protocol=3.1.1"),
        ("mqtt://:secret@host:1883?protocol=3.1.1", "needs a user name"),
        ("mqtt://u:secret@host:1883#protocol=3.1.1", "fragment"),
    ],
)
def test_bad_url_is_one_readable_line_without_the_password(url: str, says: str) -> None:
    with pytest.raises(BadMqttUrl, match=says) as caught:
        MqttUrl.parse(url)
    assert "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("MQTT broker URL")


def test_bad_url_is_an_mqtt_error_and_no_other_packages() -> None:
    assert issubclass(BadMqttUrl, MqttError)
    assert MqttError.__mro__[1:] == (Exception, BaseException, object)


def test_redact_hides_only_the_password() -> None:
    assert redact("mqtt://u:p%40ss@h:1") == "mqtt://u:***@h:1"
    assert redact("mqtt://u@h:1") == "mqtt://u@h:1"
    assert redact("mqtt://h:1") == "mqtt://h:1"
    assert redact("u:a://b@h") == "u:***@h"
    assert redact("mqtt://u:a://b@c@h") == "mqtt://u:***@h"


def test_no_other_module_parses_a_broker_url_by_hand() -> None:
    hand_parsers = []
    for package in ("ingest", "streams", "firmware_sim", "silobreak"):
        for source in (ROOT / package).rglob("*.py"):
            text = source.read_text()
            if "mqtts" in text and ("urlsplit" in text or "urlparse" in text):
                hand_parsers.append(str(source.relative_to(ROOT)))
    assert hand_parsers == []
