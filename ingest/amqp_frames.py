"""The three AMQP 0-9-1 frames of one delivery (Basic.Deliver, content header, body), parsed
straight from the bytes read.

pika builds a method object, a properties object and a body frame for every delivery and routes
each through its callbacks: ~12 µs of CPU a message here, where this project's MQTT client
parses a PUBLISH in ~3. The AMQP source hands every delivery that arrives whole to this parser
and everything else (handshake, acks' answers, heartbeats, a delivery split over more frames)
to pika.
"""

from __future__ import annotations

import struct
from typing import Final, Literal, NamedTuple

_FRAME_HEAD: Final = struct.Struct(">BHI")  # type, channel, payload size
_U64: Final = struct.Struct(">Q")
_HEAD_SIZE: Final = 7
_FRAME_END: Final = 0xCE
_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC_DELIVER: Final = b"\x00\x3c\x00\x3c"  # class 60 (basic), method 60 (deliver)
# Content header payload: class id, weight, body size, then the property flags.
_BODY_SIZE_AT: Final = 4


class Delivery(NamedTuple):
    size: int  # bytes the three frames took
    delivery_tag: int
    routing_key: str
    body: bytes


WAIT: Final = "wait"  # the frames are not all there yet: read more
OTHER: Final = "other"  # not a one-body delivery on the channel: pika's to decode


def parse_delivery(buf: bytes, pos: int, channel: int) -> Delivery | Literal["wait", "other"]:
    """The delivery on `channel` whose frames start at `buf[pos]`, if they are all there."""
    end = len(buf)
    if end - pos < _HEAD_SIZE + 4:
        return WAIT
    kind, on, size = _FRAME_HEAD.unpack_from(buf, pos)
    if kind != _METHOD or on != channel or buf[pos + 7 : pos + 11] != _BASIC_DELIVER:
        return OTHER
    method_end = pos + _HEAD_SIZE + size
    if method_end + 1 + _HEAD_SIZE + 12 > end:
        return WAIT
    if buf[method_end] != _FRAME_END:
        return OTHER
    p = pos + 11
    p += 1 + buf[p]  # consumer tag
    (tag,) = _U64.unpack_from(buf, p)
    p += 9  # delivery tag, redelivered
    p += 1 + buf[p]  # exchange
    key_end = p + 1 + buf[p]
    routing_key = buf[p + 1 : key_end].decode()
    header = method_end + 1
    kind, on, size = _FRAME_HEAD.unpack_from(buf, header)
    if kind != _HEADER or on != channel:
        return OTHER
    (body_size,) = _U64.unpack_from(buf, header + _HEAD_SIZE + _BODY_SIZE_AT)
    header_end = header + _HEAD_SIZE + size
    if header_end >= end:
        return WAIT
    if buf[header_end] != _FRAME_END:
        return OTHER
    body_at = header_end + 1
    if body_size == 0:  # no body frame follows
        return Delivery(body_at - pos, tag, routing_key, b"")
    if body_at + _HEAD_SIZE > end:
        return WAIT
    kind, on, size = _FRAME_HEAD.unpack_from(buf, body_at)
    if kind != _BODY or on != channel or size != body_size:
        return OTHER  # a body in several frames (larger than the frame size): pika's
    body_end = body_at + _HEAD_SIZE + size
    if body_end >= end:
        return WAIT
    if buf[body_end] != _FRAME_END:
        return OTHER
    return Delivery(body_end + 1 - pos, tag, routing_key, buf[body_at + _HEAD_SIZE : body_end])
