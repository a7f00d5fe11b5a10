"""The delivery parser against the frames pika itself writes, whole, cut short and otherwise."""

from __future__ import annotations

import pika.frame
import pika.spec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.amqp_frames import OTHER, WAIT, Delivery, parse_delivery


def delivery_frames(
    channel: int, tag: int, key: str, body: bytes, *, frame_max: int = 131_072
) -> bytes:
    method = pika.spec.Basic.Deliver("ctag-1", tag, False, "amq.topic", key)
    props = pika.spec.BasicProperties(delivery_mode=2, headers={"x-mqtt-publish-qos": 1})
    out = bytes(pika.frame.Method(channel, method).marshal())
    out += pika.frame.Header(channel, len(body), props).marshal()
    for at in range(0, len(body), frame_max - 8):
        out += pika.frame.Body(channel, body[at : at + frame_max - 8]).marshal()
    return bytes(out)


@given(
    tag=st.integers(1, 2**64 - 1),
    key=st.text("abcdefghijklmnopqrstuvwxyz0123456789./-_", min_size=1, max_size=200),
    body=st.binary(max_size=4096),
)
def test_a_whole_delivery_is_parsed_with_its_tag_key_and_body(
    tag: int, key: str, body: bytes
) -> None:
    frames = delivery_frames(1, tag, key, body)
    parsed = parse_delivery(b"xx" + frames + b"next", 2, 1)
    assert isinstance(parsed, Delivery)
    assert (parsed.size, parsed.delivery_tag, parsed.routing_key, parsed.body) == (
        len(frames), tag, key, body,
    )  # fmt: skip


def test_a_delivery_cut_anywhere_waits_for_the_rest() -> None:
    frames = delivery_frames(1, 7, "devices.lamp-1.telemetry", b'{"ts": 1}')
    for cut in range(len(frames)):
        assert parse_delivery(frames[:cut], 0, 1) == WAIT, cut


def test_an_empty_body_has_no_body_frame() -> None:
    frames = delivery_frames(1, 3, "devices.a.status", b"")
    parsed = parse_delivery(frames + b"more", 0, 1)
    assert isinstance(parsed, Delivery)
    assert (parsed.size, parsed.body) == (len(frames), b"")


@pytest.mark.parametrize(
    "frames",
    [
        delivery_frames(2, 1, "devices.a.telemetry", b"{}"),  # another channel
        pika.frame.Method(1, pika.spec.Basic.ConsumeOk("ctag-1")).marshal(),
        pika.frame.Heartbeat().marshal() * 4,
        delivery_frames(1, 1, "devices.a.telemetry", b"x" * 100, frame_max=64),  # split body
    ],
    ids=["other-channel", "other-method", "heartbeats", "body-in-several-frames"],
)
def test_anything_else_is_left_to_pika(frames: bytes) -> None:
    assert parse_delivery(frames, 0, 1) == OTHER
