"""MQTT 5.0 and 3.1.1 on the wire: packet encoding and an incremental parser.

Each function takes `v5` (True: MQTT 5.0, False: 3.1.1, protocol level 4). The two differ on
the wire by what 3.1.1 lacks: properties, reason codes in PUBACK and DISCONNECT, and the
subscription options beyond QoS.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, cast

from mqtt.errors import MqttProtocolError
from retries import Policy

logger = logging.getLogger(__name__)

# Packet identifiers are 16-bit and never 0 (MQTT 5.0 §2.2.1).
MAX_PACKET_ID: Final = 65535
# The largest value a four-byte Variable Byte Integer holds (§1.5.5).
MAX_REMAINING_LENGTH: Final = 268_435_455
# A broker that has not accepted TCP or answered CONNECT/SUBSCRIBE by then is not coming.
CONNECT_TIMEOUT_S: Final = 10.0
# Reconnect backoff: the first retry comes soon after a network blip; the cap means a broker
# that is back is found within 5 s; each delay is drawn from its upper half so that ingestors
# do not reconnect in lockstep.
RECONNECT: Final = Policy(first=0.2, cap=5.0)
# How long the broker keeps a gone subscriber's session and queue: readings older than the
# ingestor's default accepted window (7 days) would be rejected anyway.
SESSION_EXPIRY_S: Final = 7 * 24 * 3600
# Unacknowledged QoS 1 messages the broker may send us: with ack-after-commit, throughput is
# this window over commit latency; 20,000 covers 25k msg/s with commits of up to 0.8 s.
# Mosquitto 2.0.11 holds to it only until the first PUBACK: each PUBACK then releases up to
# this many queued messages (measured), so pause_reading() is what bounds our memory.
RECEIVE_MAXIMUM: Final = 20_000
# Publisher writes of up to this many pre-encoded packets (~190 KiB of 150-byte messages): one
# syscall per thousand messages, without encoding far ahead of what the socket takes.
PUBLISH_CHUNK: Final = 1024
# A short-form PUBACK (§3.4.2.1) is 0x40 0x02 id_hi id_lo: one big-endian 32-bit word per id.
_PUBACK_WORD: Final = 0x4002_0000

# The whole PINGREQ packet: type 12, remaining length 0 (§3.12).
PINGREQ: Final = b"\xc0\x00"

# -- encoding -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes when this client vanishes (§3.1.2.5)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def encode_connect(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    clean_start: bool = True,
    session_expiry: int = 0,
    receive_maximum: int = MAX_PACKET_ID,
    will: Will | None = None,
    v5: bool = True,
) -> bytes:
    """CONNECT; on 3.1.1 `clean_start` is the Clean Session flag and the session expiry and
    receive maximum are not sent (3.1.1 has neither: the broker's own settings apply)."""
    if not 1 <= receive_maximum <= MAX_PACKET_ID:  # 0 is a protocol error (§3.1.2.11.3)
        raise ValueError(f"receive_maximum must be 1..65535, not {receive_maximum}")
    # Receive Maximum is sent even at 65535, its default when absent (§3.1.2.11.3): Mosquitto
    # 2.0.11 gives a client that omits it max_inflight_messages (default 20) instead.
    props = b"\x21" + struct.pack(">H", receive_maximum)
    if session_expiry:
        props += b"\x11" + struct.pack(">I", session_expiry)
    flags = clean_start << 1
    tail = [_string(client_id)]
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (will.retain << 5)
        tail += [b"\x00"] if v5 else []  # no will properties
        tail += [_string(will.topic), _binary(will.payload)]
    if password is not None and username is None and not v5:  # 3.1.1 §3.1.2.9
        raise ValueError("MQTT 3.1.1 sends a password only with a user name")
    if username is not None:
        flags |= 0x80
        tail.append(_string(username))
    if password is not None:
        flags |= 0x40
        tail.append(_binary(password.encode()))
    if v5:
        head = b"\x00\x04MQTT\x05" + struct.pack(">BH", flags, keepalive) + _vbi(len(props)) + props
    else:
        head = b"\x00\x04MQTT\x04" + struct.pack(">BH", flags, keepalive)
    return _packet(0x10, head + b"".join(tail))


def encode_subscribe(
    packet_id: int, topic_filters: Sequence[str], *, qos: int = 1, v5: bool = True
) -> bytes:
    # Retain Handling 1 (§3.8.3.1): retained messages only for a new subscription, so a
    # resubscribe after reconnect does not deliver them a second time. 3.1.1 has only the
    # QoS bits (its §3.8.3.1: the rest are reserved): a resubscribe gets them again.
    options = bytes((qos | 0x10,)) if v5 else bytes((qos,))
    body = [struct.pack(">HB", packet_id, 0) if v5 else struct.pack(">H", packet_id)]
    body += [_string(f) + options for f in topic_filters]
    return _packet(0x82, b"".join(body))


def encode_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
    v5: bool = True,
) -> bytes:
    name = topic.encode()
    props = b"\x00" if v5 else b""  # no properties; 3.1.1 has no field for them
    if qos:
        if not 0 < packet_id <= MAX_PACKET_ID or qos != 1:
            raise ValueError(f"QoS 1 needs a packet id 1..65535 (QoS {qos}, id {packet_id})")
        var = struct.pack(">H", len(name)) + name + struct.pack(">H", packet_id) + props
    else:
        var = struct.pack(">H", len(name)) + name + props
    first = 0x30 | (dup << 3) | (qos << 1) | retain
    return bytes((first,)) + _vbi(len(var) + len(payload)) + var + payload


def encode_pubacks(packet_ids: Iterable[int]) -> bytes:
    """PUBACKs (success, short form) for many packet ids as one buffer; id 0 (QoS 0) is skipped.

    The short form is also the whole of a 3.1.1 PUBACK.
    """
    words = [_PUBACK_WORD | pid for pid in packet_ids if pid]
    if words and (min(words) <= _PUBACK_WORD or max(words) > _PUBACK_WORD | MAX_PACKET_ID):
        raise ValueError("packet ids must be 1..65535")
    return struct.pack(f">{len(words)}I", *words)


def encode_disconnect(reason_code: int = 0, *, v5: bool = True) -> bytes:
    if reason_code and not v5:
        raise ValueError(f"a 3.1.1 DISCONNECT has no reason code (asked for 0x{reason_code:02X})")
    return b"\xe0\x00" if reason_code == 0 else bytes((0xE0, 1, reason_code))


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _vbi(len(body)) + body


def _vbi(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value > MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} bytes is over the MQTT limit of {MAX_REMAINING_LENGTH}")
    out = bytearray()
    while value:
        value, digit = divmod(value, 0x80)
        out.append(digit | (0x80 if value else 0))
    return bytes(out)


def _string(text: str) -> bytes:
    return _binary(text.encode())


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"a {len(data)}-byte field is over the MQTT limit of 65535")
    return struct.pack(">H", len(data)) + data


# -- parsing ----------------------------------------------------------------------------------


class Publish(NamedTuple):
    packet_id: int  # 0 for QoS 0
    topic: str
    payload: bytes
    qos: int
    dup: bool


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason_code: int
    receive_maximum: int = MAX_PACKET_ID
    assigned_client_id: str | None = None
    server_keep_alive: int | None = None
    reason_string: str | None = None


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason_code: int
    reason_string: str | None = None


Packet = Publish | ConnAck | SubAck | PubAck | PingResp | Disconnect


class PacketReader:
    """Cuts the byte stream from a broker into packets; a partial packet waits for more bytes."""

    __slots__ = ("_held", "_held_len", "_need", "_v5")

    def __init__(self, *, v5: bool = True) -> None:
        self._v5 = v5
        self._held: list[bytes] = []  # the start of an incomplete packet, in pieces
        self._held_len = 0
        self._need = 0  # bytes the incomplete packet needs before parsing is worth trying

    def feed(self, data: bytes) -> list[Packet]:
        if self._held:
            # Joined only once the packet is complete: a large packet arriving in many reads
            # is copied once, not once per read.
            self._held.append(data)
            self._held_len += len(data)
            if self._held_len < self._need:
                return []
            data = b"".join(self._held)
            self._held = []
        packets, used, self._need = _cut(data, self._v5)
        if used < len(data):
            self._held = [data[used:]]
            self._held_len = len(data) - used
        return packets


def _cut(data: bytes, v5: bool = True) -> tuple[list[Packet], int, int]:
    """The whole packets at the start of `data`, the bytes they use, and how many bytes the
    incomplete packet after them needs before it can be parsed."""
    packets: list[Packet] = []
    new_tuple = tuple.__new__
    size = len(data)
    i = 0
    try:
        while True:
            need = size - i + 1
            if need < 3:  # fewer than the 2 bytes of the shortest fixed header
                break
            first = data[i]
            length = data[i + 1]
            start = i + 2
            if length & 0x80:
                if i + 2 < size and data[i + 2] < 0x80:  # two bytes: 128 B to 16 KiB, inline
                    length = (length & 0x7F) | (data[i + 2] << 7)
                    start = i + 3
                else:
                    length, start = _read_vbi(data, i + 1)
                    if length < 0:
                        break
            end = start + length
            if end > size:
                need = end - i
                break
            if first >> 4 == 3:  # PUBLISH, inline: this loop runs for every message
                qos = (first >> 1) & 3
                k = start + 2 + ((data[start] << 8) | data[start + 1])
                topic = data[start + 2 : k].decode()
                packet_id = 0
                if qos:
                    packet_id = (data[k] << 8) | data[k + 1]
                    k += 2
                props = 0  # 3.1.1: the payload follows the packet id
                if v5:
                    props = data[k]
                    if props < 0x80:
                        k += 1 + props
                    else:
                        props, k = _read_vbi(data, k)
                        k += props
                if k > end or qos == 3 or props < 0:
                    raise MqttProtocolError(f"malformed PUBLISH on {topic!r} from the broker")
                # tuple.__new__ skips NamedTuple's Python-level __new__: 130 ns, not 320.
                fields = (packet_id, topic, data[k:end], qos, bool(first & 0x08))
                packets.append(new_tuple(Publish, fields))
            else:
                packets.append(_parse_control(first, data, start, end, v5))
            i = end
    except (IndexError, UnicodeDecodeError, struct.error) as exc:
        raise MqttProtocolError(f"malformed packet from the broker: {exc}") from exc
    return packets, i, need


def _parse_control(first: int, data: bytes, start: int, end: int, v5: bool) -> Packet:
    kind = first >> 4
    if kind == 4:  # PUBACK; reason code and properties may be omitted (§3.4.2.1)
        code = data[start + 2] if end - start > 2 else 0
        return PubAck((data[start] << 8) | data[start + 1], code)
    if kind == 2:  # CONNACK; a 3.1.1 broker sends just flags and a return code
        props = _parse_properties(data, start + 2, end)[0] if end - start > 2 else {}
        return ConnAck(
            session_present=bool(data[start] & 1),
            reason_code=data[start + 1],
            receive_maximum=cast(int, props.get(0x21, MAX_PACKET_ID)),
            assigned_client_id=cast("str | None", props.get(0x12)),
            server_keep_alive=cast("int | None", props.get(0x13)),
            reason_string=cast("str | None", props.get(0x1F)),
        )
    if kind == 9:  # SUBACK; 3.1.1's has no properties, and 0x80 is its one failure code
        k = _parse_properties(data, start + 2, end)[1] if v5 else start + 2
        return SubAck((data[start] << 8) | data[start + 1], tuple(data[k:end]))
    if kind == 13:
        return PingResp()
    if kind == 14:  # DISCONNECT from the server
        props = _parse_properties(data, start + 1, end)[0] if end - start > 1 else {}
        code = data[start] if end > start else 0
        return Disconnect(code, cast("str | None", props.get(0x1F)))
    raise MqttProtocolError(f"unexpected MQTT packet type {kind} from the broker")


# Property identifier -> how its value is encoded (§2.2.2.2): 1/2/4-byte integer,
# variable byte integer, UTF-8 string, binary data, or a string pair.
_PROPERTY_KINDS: Final = {
    0x01: "1", 0x02: "4", 0x03: "s", 0x08: "s", 0x09: "b", 0x0B: "v", 0x11: "4", 0x12: "s",
    0x13: "2", 0x15: "s", 0x16: "b", 0x17: "1", 0x18: "4", 0x19: "1", 0x1A: "s", 0x1C: "s",
    0x1F: "s", 0x21: "2", 0x22: "2", 0x23: "2", 0x24: "1", 0x25: "1", 0x26: "p", 0x27: "4",
    0x28: "1", 0x29: "1", 0x2A: "1",
}  # fmt: skip


def _parse_properties(data: bytes, i: int, end: int) -> tuple[dict[int, int | str | bytes], int]:
    """Properties starting at `i` (their length first) and the index after them."""
    length, i = _read_vbi(data, i)
    stop = i + length
    if length < 0 or stop > end:
        raise MqttProtocolError("malformed properties from the broker")
    props: dict[int, int | str | bytes] = {}
    while i < stop:
        ident, kind = data[i], _PROPERTY_KINDS.get(data[i])
        i += 1
        if kind is None:
            raise MqttProtocolError(f"unknown MQTT property 0x{ident:02X} from the broker")
        if kind in "124":
            props[ident] = int.from_bytes(data[i : i + int(kind)], "big")
            i += int(kind)
        elif kind == "v":
            props[ident], i = _read_vbi(data, i)
        elif kind == "p":  # a user property (a string pair): nothing here needs one
            i = _skip_field(data, _skip_field(data, i))
        else:
            value = data[i + 2 : _skip_field(data, i)]
            props[ident] = value if kind == "b" else value.decode()
            i += 2 + len(value)
    return props, stop


def _skip_field(data: bytes, i: int) -> int:
    """The index after the length-prefixed string or binary field at `i`."""
    return i + 2 + ((data[i] << 8) | data[i + 1])


def _read_vbi(data: bytes, i: int) -> tuple[int, int]:
    """A Variable Byte Integer at `i` and the index after it; (-1, i) when data ends inside it."""
    value = 0
    for n in range(4):
        if i + n >= len(data):
            return -1, i
        digit = data[i + n]
        value |= (digit & 0x7F) << (7 * n)
        if digit < 0x80:
            return value, i + n + 1
    raise MqttProtocolError("a variable byte integer longer than 4 bytes from the broker")
