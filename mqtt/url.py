"""Broker URLs, `mqtt://[user[:password]@]host[:port][?protocol=3.1.1]`, parsed in one place.

`mqtts://` is the same over TLS. The one query parameter, `protocol`, is the MQTT version the
client speaks: `5` (the default) or `3.1.1` (for brokers that speak only that, such as
RabbitMQ's MQTT plugin before 3.13).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from mqtt.errors import BadMqttUrl

logger = logging.getLogger(__name__)

# IANA ports for MQTT and MQTT over TLS.
DEFAULT_PORT: Final = 1883
DEFAULT_TLS_PORT: Final = 8883
_SCHEMES: Final = {"mqtt": DEFAULT_PORT, "mqtts": DEFAULT_TLS_PORT}
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOW: Final = "write mqtt://[user:password@]host[:port], or mqtts:// for TLS"

ProtocolVersion = Literal["5", "3.1.1"]
# What `?protocol=` accepts, and the version each spelling means.
_PROTOCOLS: Final[dict[str, ProtocolVersion]] = {"5": "5", "5.0": "5", "3.1.1": "3.1.1"}
_HOW_PROTOCOL: Final = "write ?protocol=5 (the default) or ?protocol=3.1.1"


@dataclass(frozen=True, slots=True)
class MqttUrl:
    """Where a broker is and who to be there; the password never shows in repr() or str()."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    protocol: ProtocolVersion = "5"

    @classmethod
    def parse(cls, url: str) -> MqttUrl:
        """Parse `url`; BadMqttUrl (one line, password hidden) says what to write instead.

        An empty user name or password counts as none; both are percent-decoded.
        """
        shown = redact(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise BadMqttUrl(
                f"MQTT broker URL {shown!r}: the port must be a number from 1 to 65535"
            ) from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise BadMqttUrl(f"MQTT broker URL {shown!r}: {_HOW}")
        if port == 0:
            raise BadMqttUrl(f"MQTT broker URL {shown!r}: the port must be from 1 to 65535")
        if not parts.hostname:
            raise BadMqttUrl(f"MQTT broker URL {shown!r} names no host: {_HOW}")
        if parts.path not in ("", "/") or parts.fragment:
            raise BadMqttUrl(f"MQTT broker URL {shown!r}: a path or fragment has no meaning")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        protocol = _protocol(parts.query, shown)
        if password is not None and username is None and protocol == "3.1.1":
            # MQTT 3.1.1 §3.1.2.9: no password flag without the user name flag.
            raise BadMqttUrl(
                f"MQTT broker URL {shown!r}: MQTT 3.1.1 needs a user name with a password"
            )
        return cls(
            host=parts.hostname,
            port=port or _SCHEMES[scheme],
            username=username,
            password=password,
            tls=scheme == "mqtts",
            protocol=protocol,
        )

    @property
    def broker(self) -> str:
        """`host:port`, as error messages and logs name the broker."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def v5(self) -> bool:
        """True for MQTT 5, False for 3.1.1."""
        return self.protocol == "5"

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        query = "" if self.v5 else f"?protocol={self.protocol}"
        return f"{scheme}://{user}{self.broker}{query}"


def _protocol(query: str, shown: str) -> ProtocolVersion:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        pairs = [("", "")]
    keys = [key for key, _ in pairs]
    if any(key != "protocol" for key in keys) or len(keys) > 1:
        raise BadMqttUrl(f"MQTT broker URL {shown!r}: the only query parameter is protocol")
    version = _PROTOCOLS.get(pairs[0][1]) if pairs else "5"
    if version is None:
        raise BadMqttUrl(f"MQTT broker URL {shown!r}: {_HOW_PROTOCOL}")
    return version


def redact(url: str) -> str:
    """`url` with its password, if any, replaced by `***`: safe for messages and logs."""
    # Without a scheme (RFC 3986 §3.1), `user:password@host` is still someone's password.
    scheme, sep, rest = url.partition("://") if _SCHEME.match(url) else ("", "", url)
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"
