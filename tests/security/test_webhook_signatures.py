"""Attack 5: a captured webhook delivery replayed under another key, to another subscription,
later, or altered. The receiver is real and verifies with the reference verifier."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from streams.client import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    SUBSCRIPTION_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_TOLERANCE_S,
    verify_webhook,
)
from tests.security.conftest import Receiver
from tests.streams.conftest import Town, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.security]


def test_a_captured_delivery_verifies_only_as_it_was_sent(town: Town, receiver: Receiver) -> None:
    g = town.grant("environment", consumer="planning", device_types=["air_sensor"],
                   metrics=["pm25"])  # fmt: skip
    subs = []
    url = f"http://127.0.0.1:{town.hook_port}/hooks/environment/in"
    with town.http("planning") as h:
        for _ in range(2):
            r = h.post("/v1/subscriptions", json={
                "grant_id": g["id"], "delivery": "webhook", "webhook_url": url})  # fmt: skip
            assert r.status_code == 201, r.text
            subs.append(r.json())
    air = f"{town.prefix}air-n1"
    town.write("air_sensor", [(datetime.now(UTC), air, 12.0, 20.0, 30.0, 40.0, 15.0, 50.0)])
    wait_until(lambda: len(receiver.paths()) == 2, 20, "one delivery per subscription")
    by_sub = {headers[SUBSCRIPTION_HEADER]: (headers, body) for _, headers, body in receiver.posts}
    first, second = subs
    headers, body = by_sub[first["id"]]
    secret = first["secret"]
    assert headers[SIGNATURE_HEADER].startswith("v2=")
    assert verify_webhook(secret, headers, body, subscription=first["id"])

    sent = int(headers[TIMESTAMP_HEADER])
    other_headers, other_body = by_sub[second["id"]]
    replays = {
        "another key": {**headers, IDEMPOTENCY_HEADER: f"{first['id']}-2"},
        "another subscription's key": {**headers, IDEMPOTENCY_HEADER: f"{second['id']}-1"},
        "to another subscription": {**headers, SUBSCRIPTION_HEADER: second["id"],
                                    IDEMPOTENCY_HEADER: f"{second['id']}-1"},
        "another timestamp": {**headers, TIMESTAMP_HEADER: str(sent + 1)},
        "no timestamp": {k: v for k, v in headers.items() if k != TIMESTAMP_HEADER},
        "no key": {k: v for k, v in headers.items() if k != IDEMPOTENCY_HEADER},
        "the old sha256= form": {**headers, SIGNATURE_HEADER: "sha256=" + "0" * 64},
    }  # fmt: skip
    verified = {what: verify_webhook(secret, h, body) for what, h in replays.items()}
    assert verified == dict.fromkeys(replays, False)
    assert not verify_webhook(secret, headers, body + b" ")
    assert not verify_webhook(secret, headers, other_body)
    # Its own subscription's delivery, checked against the first's id: refused.
    assert verify_webhook(second["secret"], other_headers, other_body)
    assert not verify_webhook(second["secret"], other_headers, other_body, subscription=first["id"])
    # Replayed later than the tolerance: refused; within it, verified (the receiver's
    # Idempotency-Key deduplication is what refuses it then).
    late = time.time() + WEBHOOK_TOLERANCE_S + 5
    assert not verify_webhook(secret, headers, body, now=late)
    assert not verify_webhook(secret, headers, body, now=sent - WEBHOOK_TOLERANCE_S - 5)
    assert verify_webhook(secret, headers, body, now=sent + WEBHOOK_TOLERANCE_S - 5)
