"""Secrets for devices, principals and API tokens, and the hashes stored in their place."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Final

# 32 random bytes: 256 bits, beyond any guessing or offline search, so the stored hashes need
# no stretching to be safe (see the two hashes below).
SECRET_BYTES: Final = 32
# Mosquitto 2.0's password-file format for PBKDF2-HMAC-SHA512 ("$7$", what mosquitto_passwd
# writes): iterations, a 12-byte salt and the 64-byte key, both base64.
BROKER_HASH_PREFIX: Final = "$7$"
# mosquitto_passwd's own default. For a 256-bit random secret more iterations add no safety,
# but every connect and every broker reload (which re-checks each connected client) pays them.
BROKER_HASH_ITERATIONS: Final = 101
_BROKER_SALT_BYTES: Final = 12
# API tokens carry a prefix so a leaked one is recognisable (secret scanners, logs).
TOKEN_PREFIX: Final = "sbk_"  # noqa: S105 - a prefix, not a secret
_TOKEN_RE: Final = re.compile(r"sbk_[A-Za-z0-9_-]{43}")
_BROKER_HASH_RE: Final = re.compile(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


def new_secret() -> str:
    """A device or broker-account secret: 43 URL-safe characters, shown once, never stored."""
    return secrets.token_urlsafe(SECRET_BYTES)


def new_token() -> str:
    """An HTTP API bearer token: `sbk_` and 43 URL-safe characters."""
    return TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def new_token_id() -> str:
    """A short public handle for a token (to list and revoke it by), not a secret."""
    return "tok_" + secrets.token_hex(6)


def looks_like_token(value: str) -> bool:
    return _TOKEN_RE.fullmatch(value) is not None


def token_hash(token: str) -> str:
    """The stored form of an API token: SHA-256, hex.

    A plain hash is sound here because the token is 256 random bits: no dictionary or
    brute force applies, and a fast hash lets every request be checked with one indexed
    lookup. (Stretching, as for human passwords, would only slow each request down.)
    """
    return hashlib.sha256(token.encode()).hexdigest()


def broker_hash(secret: str, *, salt: bytes | None = None) -> str:
    """The broker's stored form of a secret: Mosquitto's `$7$` PBKDF2-HMAC-SHA512 line part.

    This is what goes into the broker's password file, and the only form the registry keeps:
    the file can be rewritten from the database at any time without knowing any secret.
    """
    salt = salt if salt is not None else secrets.token_bytes(_BROKER_SALT_BYTES)
    key = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, BROKER_HASH_ITERATIONS)
    return (
        f"{BROKER_HASH_PREFIX}{BROKER_HASH_ITERATIONS}$"
        f"{base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    )


def broker_hash_matches(secret: str, stored: str) -> bool:
    """Whether `secret` is the one `stored` (a `$7$` hash) was made from."""
    match = _BROKER_HASH_RE.fullmatch(stored)
    if match is None:
        return False
    salt = base64.b64decode(match[2])
    key = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, int(match[1]))
    return hmac.compare_digest(base64.b64encode(key).decode(), match[3])


def is_broker_hash(value: str) -> bool:
    return _BROKER_HASH_RE.fullmatch(value) is not None
