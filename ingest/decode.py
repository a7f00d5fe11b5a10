"""Decode raw telemetry publishes into validated rows, or a reject with its reason code."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from devices.catalog import Catalog, Kind, active
from devices.registry import RegistrySnapshot

# Contract: reasons are checked in this order.
PAYLOAD_TOO_LARGE: Final = "payload_too_large"
MALFORMED_PAYLOAD: Final = "malformed_payload"
UNKNOWN_DEVICE: Final = "unknown_device"
SCHEMA_VIOLATION: Final = "schema_violation"
TIMESTAMP_OUT_OF_RANGE: Final = "timestamp_out_of_range"
DECODE_REASONS: Final = (
    PAYLOAD_TOO_LARGE,
    MALFORMED_PAYLOAD,
    UNKNOWN_DEVICE,
    SCHEMA_VIOLATION,
    TIMESTAMP_OUT_OF_RANGE,
)
# Not a decode outcome: a message that decoded, and that the database refused for good when
# ingest wrote it (a constraint or trigger the decoder does not know of; ingest/service.py).
STORE_REFUSED: Final = "store_refused"
# Every reason a dead letter can have (rejected_messages.reason, the metrics' labels).
REASONS: Final = (*DECODE_REASONS, STORE_REFUSED)

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_FAR_FUTURE: Final = datetime.max.replace(tzinfo=UTC)
_FAR_PAST: Final = datetime.min.replace(tzinfo=UTC)
# Whole-number metrics are stored as int8 (store/schema.py): a value past its range is one
# the store cannot hold, so it is a schema violation here, not a batch the database refuses.
_INT8_MIN: Final = -(2**63)
_INT8_MAX: Final = 2**63 - 1
_FLOAT_MAX: Final = sys.float_info.max
# RFC 8428 §4.5.3: SenML times below 2**28 are relative to now.
_SENML_RELATIVE_LIMIT: Final = 2**28
_TOPIC_PREFIX: Final = "devices/"
_TOPIC_SUFFIX: Final = "/telemetry"

_json_decode = msgspec.json.Decoder().decode

Row = tuple[Any, ...]
"""(time, device_id, service, *metric values in catalog order, None where absent)."""


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message that validated: the table it goes to and its rows (one per timestamp)."""

    device_type: str
    rows: list[Row]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that cannot be stored, with the contract's reason code."""

    reason: str
    detail: str
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """The accepted span of reading times, fixed for a burst of messages."""

    now: datetime
    earliest: datetime
    latest: datetime

    @classmethod
    def at(cls, now: datetime, *, max_age: timedelta, max_future: timedelta) -> Window:
        return cls(now, now - max_age, now + max_future)


class _Invalid(Exception):
    """A schema violation found deep in validation."""


# name -> (position in the row, kind, minimum, maximum, codes), per device type. An open end
# (a meter's index has no maximum) becomes the largest finite float, so that the one range
# check also refuses infinities, as the contract says (NaN fails every comparison anyway).
# Built once per active catalog (devices.catalog.activate at start-up).
_Spec = tuple[int, Kind, float, float, Mapping[str, int]]
_specs_for: list[tuple[Catalog | None, dict[str, dict[str, _Spec]], dict[str, int]]] = [
    (None, {}, {})
]


def _specs() -> tuple[dict[str, dict[str, _Spec]], dict[str, int]]:
    catalog = active()
    built, specs, width = _specs_for[0]
    if built is not catalog:
        specs = {
            t.name: {
                m.name: (
                    3 + i,
                    m.kind,
                    max(m.minimum, -_FLOAT_MAX),
                    min(m.maximum, _FLOAT_MAX),
                    m.codes,
                )
                for i, m in enumerate(t.metrics)
            }
            for t in catalog.types.values()
        }
        width = {t.name: 3 + len(t.metrics) for t in catalog.types.values()}
        _specs_for[0] = (catalog, specs, width)
    return specs, width


def device_id_of(topic: str) -> str | None:
    """The device id in `devices/{id}/telemetry`, or None for any other topic."""
    if topic.startswith(_TOPIC_PREFIX) and topic.endswith(_TOPIC_SUFFIX):
        middle = topic[len(_TOPIC_PREFIX) : -len(_TOPIC_SUFFIX)]
        if middle and "/" not in middle:
            return middle
    return None


def decode(
    topic: str,
    payload: bytes,
    registry: RegistrySnapshot,
    window: Window,
    *,
    max_payload: int,
) -> Accepted | Rejected:
    """Validate one telemetry publish against its device's type from the registry."""
    device_id = device_id_of(topic)
    if len(payload) > max_payload:
        return Rejected(PAYLOAD_TOO_LARGE, f"{len(payload)} bytes > {max_payload}", device_id)
    doc = _parse_json(payload)
    if isinstance(doc, Rejected):
        return Rejected(doc.reason, doc.detail, device_id)
    if not (isinstance(doc, dict) or (isinstance(doc, list) and _all_objects(doc))):
        return Rejected(MALFORMED_PAYLOAD, "not a JSON object or SenML array", device_id)
    device = registry.get(device_id) if device_id is not None else None
    if device is None:
        return Rejected(UNKNOWN_DEVICE, f"device {device_id!r} is not registered", device_id)
    dtype = device.device_type.name
    try:
        if isinstance(doc, dict):
            timed = [(_envelope_time(doc, window.now), _envelope_metrics(doc, dtype))]
        else:
            timed = _senml(doc, dtype, window.now)
    except _Invalid as exc:
        return Rejected(SCHEMA_VIOLATION, str(exc), device_id)
    rows: list[Row] = []
    for time, values in timed:
        if time > window.latest:
            return Rejected(
                TIMESTAMP_OUT_OF_RANGE, f"{time.isoformat()} is in the future", device_id
            )
        if time < window.earliest:
            return Rejected(
                TIMESTAMP_OUT_OF_RANGE, f"{time.isoformat()} is older than the window", device_id
            )
        values[0] = time
        values[1] = device_id
        values[2] = device.service_at(time)
        rows.append(tuple(values))
    return Accepted(dtype, rows)


def _parse_json(payload: bytes) -> object:
    # JSON is UTF-8 (RFC 8259 §8.1); msgspec lets UTF-8-encoded surrogates through, so text
    # that is not all ASCII (rare in telemetry: the check costs ~10 ns) is checked first.
    if not payload.isascii():
        try:
            payload.decode()
        except UnicodeDecodeError as exc:
            return Rejected(MALFORMED_PAYLOAD, f"not UTF-8: {exc}")
    try:
        return _json_decode(payload)
    except RecursionError:
        return Rejected(MALFORMED_PAYLOAD, "JSON nested too deeply")
    except (msgspec.DecodeError, UnicodeDecodeError):
        # msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 in a key.
        pass
    # The strict decoder refuses NaN and Infinity; the contract calls those a schema
    # violation, not a malformed payload, so parse once more leniently before giving up.
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:
        return Rejected(MALFORMED_PAYLOAD, f"not JSON: {str(exc)[:200]}")


def _all_objects(items: list[object]) -> bool:
    return all(isinstance(item, dict) for item in items)


def _envelope_time(doc: dict[str, Any], now: datetime) -> datetime:
    seq = doc.get("seq")
    if seq is not None and (type(seq) is not int or seq < 0):
        raise _Invalid("seq must be a whole number >= 0")
    ts = doc.get("ts")
    if ts is None:
        return now
    if type(ts) is str:
        try:
            parsed = datetime.fromisoformat(ts)
        except ValueError:
            raise _Invalid(f"ts {ts[:64]!r} is not ISO 8601") from None
        if parsed.tzinfo is None:
            raise _Invalid(f"ts {ts[:64]!r} has no UTC offset")
        return parsed
    if type(ts) is int or type(ts) is float:
        return _epoch_millis(ts)
    raise _Invalid("ts must be an ISO 8601 string with an offset or epoch milliseconds")


def _epoch_millis(millis: float) -> datetime:
    if not _finite(millis):
        raise _Invalid("ts is not a finite number")
    try:
        return EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        # Past the calendar's end: outside any window, so the window check rejects it.
        return _FAR_FUTURE if millis > 0 else _FAR_PAST


def _envelope_metrics(doc: dict[str, Any], dtype: str) -> list[Any]:
    metrics = doc.get("metrics")
    if type(metrics) is not dict:
        raise _Invalid("metrics must be a JSON object")
    if not metrics:
        raise _Invalid("metrics is empty")
    all_specs, width = _specs()
    specs = all_specs[dtype]
    values: list[Any] = [None] * width[dtype]
    for name, raw in metrics.items():
        spec = specs.get(name)
        if spec is None:
            raise _Invalid(f"unknown metric {name!r} for {dtype}")
        values[spec[0]] = _value(name, raw, spec[1], spec[2], spec[3], spec[4])
    return values


def _value(name: str, raw: object, kind: Kind, lo: float, hi: float, codes: Any) -> float | int:
    t = type(raw)
    if kind is Kind.NUMBER:
        if t is not float and t is not int:
            raise _Invalid(f"{name} must be a number")
        if not lo <= raw <= hi:  # type: ignore[operator]
            if t is float and not math.isfinite(raw):  # type: ignore[arg-type]
                raise _Invalid(f"{name} is not a finite number")
            raise _Invalid(f"{name}={raw!r} is outside [{lo:g}, {hi:g}]")
        if t is float:
            return raw  # type: ignore[return-value]
        if not _finite(raw):  # type: ignore[arg-type]
            raise _Invalid(f"{name} is not a finite number")
        return float(raw)  # type: ignore[arg-type]
    if kind is Kind.BOOL:
        if t is not bool:
            raise _Invalid(f"{name} must be true or false")
        return 1 if raw else 0
    if kind is Kind.WHOLE:
        whole = _whole(name, raw)
        if not (lo <= whole <= hi and _INT8_MIN <= whole <= _INT8_MAX):
            low, high = max(lo, _INT8_MIN), min(hi, _INT8_MAX)
            raise _Invalid(f"{name}={raw!r} is outside [{low:g}, {high:g}]")
        return whole
    # Kind.ENUM: the name or the code.
    if t is str:
        code = codes.get(raw)
        if code is None:
            raise _Invalid(f"{name}={raw!r} is not one of {', '.join(codes)}")
        return int(code)
    code = _whole(name, raw)
    if code not in codes.values():
        raise _Invalid(f"{name}={raw!r} is not a valid code")
    return code


def _whole(name: str, raw: object) -> int:
    if isinstance(raw, int) and type(raw) is not bool:
        return raw
    if isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        return int(raw)
    raise _Invalid(f"{name}={raw!r} must be a whole number")


def _senml(
    records: list[dict[str, Any]], dtype: str, now: datetime
) -> list[tuple[datetime, list[Any]]]:
    """RFC 8428 records, base fields carried forward, grouped into one row per time."""
    if not records:
        raise _Invalid("SenML pack has no records")
    all_specs, width = _specs()
    specs = all_specs[dtype]
    by_time: dict[datetime, list[Any]] = {}
    base_name, base_time, base_value, base_sum = "", 0.0, 0.0, 0.0
    for rec in records:
        bn = rec.get("bn", base_name)
        bt = rec.get("bt", base_time)
        bv = rec.get("bv", base_value)
        bs = rec.get("bs", base_sum)
        if type(bn) is not str or not _is_number(bt):
            raise _Invalid("SenML bn must be a string and bt a number")
        if not (_is_number(bv) and _is_number(bs) and _finite(bv) and _finite(bs)):
            raise _Invalid("SenML bv and bs must be finite numbers")
        base_value, base_sum = float(bv), float(bs)
        n = rec.get("n", "")
        t = rec.get("t", 0.0)
        if type(n) is not str or not _is_number(t):
            raise _Invalid("SenML n must be a string and t a number")
        if not (_finite(bt) and _finite(t)):
            raise _Invalid("SenML time is not a finite number")
        base_name, base_time = bn, float(bt)
        name = (base_name + n).replace("/", ":").rsplit(":", 1)[-1]
        spec = specs.get(name)
        if spec is None:
            raise _Invalid(f"unknown metric {name!r} for {dtype}")
        time = _senml_time(base_time + float(t), now)
        present = [k for k in ("v", "vb", "vs", "s") if k in rec]
        if len(present) != 1:
            raise _Invalid(f"SenML record for {name} needs exactly one of v, vb, vs, s")
        raw = rec[present[0]]
        # RFC 8428 §4.3: a base value is added to every numeric value after it, a base sum to
        # every sum (a cumulative index may come as a sum).
        base = base_value if present[0] == "v" else base_sum if present[0] == "s" else 0.0
        if base and _is_number(raw):
            raw = raw + base
        values = by_time.get(time)
        if values is None:
            values = by_time[time] = [None] * width[dtype]
        if values[spec[0]] is not None:
            raise _Invalid(f"SenML pack repeats {name} at {time.isoformat()}")
        values[spec[0]] = _value(name, raw, spec[1], spec[2], spec[3], spec[4])
    return list(by_time.items())


def _senml_time(seconds: float, now: datetime) -> datetime:
    if not math.isfinite(seconds):
        raise _Invalid("SenML time is not a finite number")
    try:
        if abs(seconds) < _SENML_RELATIVE_LIMIT:
            return now + timedelta(seconds=seconds)
        return EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return _FAR_FUTURE if seconds > 0 else _FAR_PAST


def _is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


def _finite(value: float) -> bool:
    """A finite float, or an int that is one as a float: JSON has no bound on integers, and
    one past a double's range stands for the same out-of-range number as 1e400 does."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
