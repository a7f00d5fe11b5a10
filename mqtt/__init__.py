"""The project's own MQTT client (MQTT 5, or 3.1.1 by `?protocol=3.1.1`): codec, connections,
broker URLs, one root error.

The ground floor: nothing here imports another project package but `backoff` (the shared
retry backoff, which imports none). `ingest` receives with
`MqttSubscriber`, `streams` delivers with `MqttPublisher`; the simulator keeps paho, as
devices do, and parses its broker URL with `MqttUrl`.
"""

from mqtt.client import MqttPublisher, MqttSubscriber
from mqtt.codec import Will
from mqtt.errors import (
    BadMqttUrl,
    BrokerUnreachable,
    ConnectionRefused,
    MqttConnectionLost,
    MqttError,
    MqttProtocolError,
    PublishRejected,
    SubscriptionDowngraded,
    SubscriptionRefused,
)
from mqtt.url import DEFAULT_PORT, DEFAULT_TLS_PORT, MqttUrl, ProtocolVersion, redact

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "BadMqttUrl",
    "BrokerUnreachable",
    "ConnectionRefused",
    "MqttConnectionLost",
    "MqttError",
    "MqttProtocolError",
    "MqttPublisher",
    "MqttSubscriber",
    "MqttUrl",
    "ProtocolVersion",
    "PublishRejected",
    "SubscriptionDowngraded",
    "SubscriptionRefused",
    "Will",
    "redact",
]
