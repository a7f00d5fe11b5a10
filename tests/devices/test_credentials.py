"""Secrets and their stored forms: the broker's `$7$` hash is Mosquitto's own format."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devices.credentials import (
    broker_hash,
    broker_hash_matches,
    is_broker_hash,
    looks_like_token,
    new_secret,
    new_token,
    token_hash,
)


def test_secrets_and_tokens_are_256_bit_and_never_repeat() -> None:
    secrets = {new_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    assert all(len(s) == 43 for s in secrets)
    token = new_token()
    assert looks_like_token(token)
    assert not looks_like_token(token[:-1])


def test_token_hash_is_sha256_hex_and_stable() -> None:
    token = new_token()
    assert token_hash(token) == token_hash(token)
    assert len(token_hash(token)) == 64
    assert token_hash(token) != token_hash(new_token())


def test_broker_hash_verifies_its_secret_only() -> None:
    secret = new_secret()
    stored = broker_hash(secret)
    assert is_broker_hash(stored)
    assert stored.startswith("$7$101$")
    assert broker_hash_matches(secret, stored)
    assert not broker_hash_matches(new_secret(), stored)
    assert broker_hash(secret) != stored  # salted


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_broker_hash_is_the_format_mosquitto_passwd_writes(tmp_path: Path) -> None:
    secret = new_secret()
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "dev-1", secret], check=True)
    written = path.read_text().strip().split(":", 1)[1]
    assert is_broker_hash(written)
    assert broker_hash_matches(secret, written)
