"""Broker password and ACL files: devices by pattern, principals by kind."""

from __future__ import annotations

import pytest

from devices.broker_auth import BrokerAuth, PrincipalAccount, check_principal
from devices.credentials import broker_hash
from devices.errors import DevicesError

HASH = broker_hash("s")


def test_password_file_holds_principals_then_devices() -> None:
    auth = BrokerAuth(
        devices=[("lamp-1", HASH)],
        principals=[PrincipalAccount("ingest", "component", HASH)],
    )
    lines = auth.password_file().splitlines()
    assert lines[1:] == [f"component~ingest:{HASH}", f"lamp-1:{HASH}"]


def test_acl_gives_each_kind_its_topics_and_devices_their_own_only() -> None:
    acl = BrokerAuth(
        devices=[],
        principals=[
            PrincipalAccount("ingest", "component", HASH),
            PrincipalAccount("lighting", "service", HASH, ["lamp-1", "lamp-2"]),
            PrincipalAccount("pollution", "team", HASH),
            PrincipalAccount("data-office", "coordinator", HASH, ["lamp-1", "meter-9"]),
        ],
    ).acl_file()
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in acl.split("\n\n") if b.strip()}
    assert blocks["user component~ingest"] == [
        "topic read devices/+/telemetry",
        "topic read devices/+/status",
        "topic read devices/+/events",
    ]
    assert blocks["user service~lighting"] == [
        "topic read deliveries/lighting/#",
        "topic write devices/lamp-1/commands",
        "topic write devices/lamp-2/commands",
    ]
    assert blocks["user team~pollution"] == ["topic read deliveries/pollution/#"]
    # A coordinator reads its organisation's devices, one by one: never a wildcard over all.
    assert blocks["user coordinator~data-office"] == [
        "topic read deliveries/data-office/#",
        "topic read devices/lamp-1/#",
        "topic read devices/meter-9/#",
    ]
    patterns = [line for line in acl.splitlines() if line.startswith("pattern")]
    assert patterns == [
        "pattern write devices/%u/telemetry",
        "pattern write devices/%u/events",
        "pattern write devices/%u/status",
        "pattern read devices/%u/commands",
    ]


def test_a_principal_needs_a_known_kind_and_a_plain_name() -> None:
    check_principal("service", "lighting")
    with pytest.raises(DevicesError, match="kind"):
        check_principal("robot", "lighting")
    with pytest.raises(DevicesError, match="name"):
        check_principal("team", "Air Team")


def test_a_user_name_the_password_file_cannot_hold_is_refused() -> None:
    with pytest.raises(DevicesError, match="password file"):
        BrokerAuth(devices=[("a:b", HASH)], principals=[]).password_file()
