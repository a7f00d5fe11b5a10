"""Webhook URLs in one normal form (RFC 3986), and the allow-list compared segment by segment.

An HTTP client removes dot segments before it sends (`/hooks/a/../../admin` goes out as
`/admin`), so a check on the raw text approves one URL and the request goes to another. Here a
URL is normalised first, the allow-list is matched on that form, and the form is what is sent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from streams.errors import StreamsError

logger = logging.getLogger(__name__)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# Percent-encodings of unreserved characters (RFC 3986 section 2.3) decode to the character
# itself (section 6.2.2.2): `%2e%2e` is `..` and is removed like it.
_UNRESERVED_PCT: Final = re.compile(r"%(2[dDeE]|5[fF]|7[eE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA])")
# An encoded `/` or `\`, or a `\`, is a separator to some servers and not to others: refused.
_SEPARATORS: Final = re.compile(r"%(2[fF]|5[cC])|\\")
_CONTROL: Final = re.compile(r"[\x00-\x20\x7f]")


class UrlRefused(StreamsError, ValueError):
    """Not a webhook URL this platform sends to; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL in normal form: what is compared and what is sent."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]  # the path's segments, dot segments removed
    query: str

    @property
    def url(self) -> str:
        default = _DEFAULT_PORTS[self.scheme]
        netloc = _bracketed(self.host) + ("" if self.port == default else f":{self.port}")
        path = "/" + "/".join(self.segments)
        return urlunsplit((self.scheme, netloc, path, self.query, ""))


def normalise(url: str) -> Target:
    """`url` in normal form, or UrlRefused naming what is wrong with it."""
    if _CONTROL.search(url):
        raise UrlRefused("a URL has no spaces or control characters")
    if _SEPARATORS.search(url):
        raise UrlRefused("an encoded '/' or '\\', or a '\\', is not allowed in a webhook URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UrlRefused("only http and https URLs")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UrlRefused("a webhook URL carries no user or password")
    if not parts.hostname:
        raise UrlRefused("a webhook URL needs a host")
    path = _UNRESERVED_PCT.sub(lambda m: chr(int(m.group(1), 16)), parts.path)
    segments = _remove_dot_segments(path)
    return Target(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], segments, parts.query)


def allowed(url: str, allow: Sequence[str]) -> bool:
    """Whether `url`, normalised, falls under one of the allow-list's entries."""
    try:
        return matching(normalise(url), allow)
    except UrlRefused:
        return False


def matching(target: Target, allow: Sequence[str]) -> bool:
    """Whether `target` is under an entry: same scheme, host and port, and the entry's path
    segments are the first of the target's (`/hooks/env` does not cover `/hooks/envXYZ`)."""
    for entry in allow:
        try:
            rule = normalise(entry)
        except UrlRefused:
            logger.warning("webhook allow-list entry %r ignored: not a URL", entry)
            continue
        prefix = rule.segments[:-1] if rule.segments[-1:] == ("",) else rule.segments
        if (rule.scheme, rule.host, rule.port) == (
            target.scheme,
            target.host,
            target.port,
        ) and target.segments[: len(prefix)] == prefix:
            return True
    return False


def _remove_dot_segments(path: str) -> tuple[str, ...]:
    """RFC 3986 section 5.2.4 over segments; `..` above the root stays at the root."""
    out: list[str] = []
    parts = path.split("/")[1:] if path.startswith("/") else path.split("/")
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return tuple(out) if out else ("",)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
