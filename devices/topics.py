"""The device identity rule and the MQTT topic scheme."""

from __future__ import annotations

import re
from typing import Final

DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
SERVICE_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,62}")

TELEMETRY: Final = "telemetry"
EVENTS: Final = "events"
STATUS: Final = "status"
COMMANDS: Final = "commands"
CHANNELS: Final = (TELEMETRY, EVENTS, STATUS, COMMANDS)

# What an ingestor subscribes to: the broker hands each message to one member of `ingest`.
TELEMETRY_FILTER: Final = "devices/+/telemetry"


def is_device_id(value: str) -> bool:
    return DEVICE_ID_RE.fullmatch(value) is not None


def topic(device_id: str, channel: str) -> str:
    """The topic a device publishes `channel` on: `devices/{device_id}/{channel}`."""
    return f"devices/{device_id}/{channel}"


def shared_filter(group: str, topic_filter: str = TELEMETRY_FILTER) -> str:
    """`topic_filter` shared by `group`; with no group, the plain filter: for a broker without
    shared subscriptions (RabbitMQ before 3.13), where one ingestor must take everything."""
    return f"$share/{group}/{topic_filter}" if group else topic_filter


def parse_device_topic(name: str) -> tuple[str, str] | None:
    """`devices/{id}/{channel}` -> (id, channel), or None when it is not a device topic."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "devices" or parts[2] not in CHANNELS:
        return None
    if DEVICE_ID_RE.fullmatch(parts[1]) is None:
        return None
    return parts[1], parts[2]
