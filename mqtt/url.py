"""Broker URLs, `mqtt://[user[:password]@]host[:port]` or `mqtts://` (TLS), parsed in one place."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from mqtt.errors import BadMqttUrl

logger = logging.getLogger(__name__)

# IANA ports for MQTT and MQTT over TLS.
DEFAULT_PORT: Final = 1883
DEFAULT_TLS_PORT: Final = 8883
_SCHEMES: Final = {"mqtt": DEFAULT_PORT, "mqtts": DEFAULT_TLS_PORT}
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_HOW: Final = "write mqtt://[user:password@]host[:port], or mqtts:// for TLS"


@dataclass(frozen=True, slots=True)
class MqttUrl:
    """Where a broker is and who to be there; the password never shows in repr() or str()."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

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
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BadMqttUrl(f"MQTT broker URL {shown!r}: a path, query or fragment has no meaning")
        return cls(
            host=parts.hostname,
            port=port or _SCHEMES[scheme],
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=scheme == "mqtts",
        )

    @property
    def broker(self) -> str:
        """`host:port`, as error messages and logs name the broker."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.broker}"


def redact(url: str) -> str:
    """`url` with its password, if any, replaced by `***`: safe for messages and logs."""
    # Without a scheme (RFC 3986 §3.1), `user:password@host` is still someone's password.
    scheme, sep, rest = url.partition("://") if _SCHEME.match(url) else ("", "", url)
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"
