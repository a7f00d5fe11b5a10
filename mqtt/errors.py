"""The mqtt package's errors, under one root, and the reason codes that name them."""

from __future__ import annotations

import logging
from typing import Final

logger = logging.getLogger(__name__)

# Reason codes (§2.4) as readable names; 0x00 also means "granted QoS 0" and "normal".
REASON_NAMES: Final[dict[int, str]] = {
    0x00: "success", 0x01: "granted QoS 1", 0x02: "granted QoS 2",
    0x04: "disconnect with will message", 0x10: "no matching subscribers",
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method",
    0x8D: "keep alive timeout", 0x8E: "session taken over", 0x8F: "topic filter invalid",
    0x90: "topic name invalid", 0x91: "packet identifier in use",
    0x93: "receive maximum exceeded", 0x94: "topic alias invalid", 0x95: "packet too large",
    0x96: "message rate too high", 0x97: "quota exceeded", 0x98: "administrative action",
    0x99: "payload format invalid", 0x9A: "retain not supported", 0x9B: "QoS not supported",
    0x9C: "use another server", 0x9D: "server moved",
    0x9E: "shared subscriptions not supported", 0x9F: "connection rate exceeded",
    0xA0: "maximum connect time", 0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}  # fmt: skip
# A broker that speaks only MQTT 3.1.1 answers our MQTT 5 CONNECT with a 3.1.1 return code.
_V3_CONNACK_NAMES: Final = {
    1: "unsupported protocol version (the broker speaks only MQTT 3.1.1 or older: "
    "add ?protocol=3.1.1 to the broker URL)",
    2: "client identifier not valid", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
}  # fmt: skip
# CONNACK return codes 1-5 (3.1.1 §3.2.2.3) as a 3.1.1 client hears them.
_V3_CONNACK_NAMES_V3: Final = {
    **_V3_CONNACK_NAMES, 1: "unacceptable protocol version (the broker does not speak MQTT 3.1.1)"
}  # fmt: skip
# CONNACK codes (v5 and 3.1.1) that a wrong user name or password earns; Mosquitto 2.0
# answers both a bad password and a missing one with 0x87.
_CREDENTIAL_CODES: Final = frozenset({0x86, 0x87, 0x8C, 4, 5})


def reason_name(code: int) -> str:
    return REASON_NAMES.get(code, f"reason code 0x{code:02X}")


# -- errors ---------------------------------------------------------------------------------


class MqttError(Exception):
    """Something went wrong talking MQTT to a broker, or a broker URL is unusable."""


class BadMqttUrl(MqttError):
    """An MQTT URL that cannot be used; the message says what to write instead."""


class BrokerUnreachable(MqttError):
    """No TCP/TLS connection to the broker (refused, timed out, DNS, certificate)."""


class ConnectionRefused(MqttError):
    """The broker answered CONNECT with a failure reason code."""

    def __init__(
        self, reason_code: int, reason_name: str, *, broker: str = "", client_id: str = ""
    ) -> None:
        self.reason_code = reason_code
        self.reason_name = reason_name
        who = f"MQTT broker {broker}".rstrip()
        whom = f" client {client_id!r}" if client_id else " the connection"
        hint = "; check the user name and password" if reason_code in _CREDENTIAL_CODES else ""
        super().__init__(
            f"{who} refused{whom}: {reason_name} (reason code 0x{reason_code:02X}){hint}"
        )


class SubscriptionRefused(MqttError):
    """The broker refused one topic filter of a SUBSCRIBE."""

    def __init__(self, topic_filter: str, reason_code: int, *, v5: bool = True) -> None:
        self.topic_filter = topic_filter
        self.reason_code = reason_code
        if v5:
            why = f"{reason_name(reason_code)} (reason code 0x{reason_code:02X})"
        else:  # 0x80 is 3.1.1's one failure code (§3.9.3): the broker says no more
            why = f"failure (SUBACK return code 0x{reason_code:02X}; MQTT 3.1.1 gives no reason)"
            if topic_filter.startswith("$share/"):
                why += "; the broker may not take shared subscriptions over MQTT 3.1.1"
        super().__init__(f"MQTT broker refused the subscription to {topic_filter!r}: {why}")


class SubscriptionDowngraded(MqttError):
    """The broker granted a topic filter a lower QoS than the 1 asked for."""

    def __init__(self, topic_filter: str, granted: int) -> None:
        self.topic_filter = topic_filter
        self.granted = granted
        super().__init__(
            f"MQTT broker granted QoS {granted} to {topic_filter!r} where QoS 1 was asked:"
            " messages would be lost on any disconnect; allow QoS 1 on the broker (max_qos)"
        )


class PublishRejected(MqttError):
    """The broker answered QoS 1 publishes with a failure PUBACK."""


class MqttConnectionLost(MqttError):
    """The connection to the broker ended (network, keepalive, or a DISCONNECT from it)."""


class MqttProtocolError(MqttError):
    """The broker sent bytes that are not MQTT (5.0 or 3.1.1, as asked) as this client speaks it."""
