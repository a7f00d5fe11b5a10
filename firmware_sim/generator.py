"""The simulated city as a deterministic, time-ordered stream of device messages."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from devices.topics import EVENTS, TELEMETRY, topic
from firmware_sim.faults import is_duplicated, malform, message_fault, out_of_range
from firmware_sim.fleet import Fleet, SimDevice
from firmware_sim.models import SimContext
from firmware_sim.payloads import event, telemetry_json, telemetry_senml

logger = logging.getLogger(__name__)

MessageKind = Literal["ok", "malformed", "out_of_range", "duplicate", "event"]


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT publish of a simulated device.

    `time` is when the device publishes (simulated, UTC); the payload's own timestamp may
    differ by the device's clock skew. `faults` names the device faults behind the values
    (lamp_failure, flashing_amber, off, drift, stuck, leak); `kind` says what the payload is.
    """

    time: datetime
    device_id: str
    topic: str
    payload: bytes
    kind: MessageKind
    seq: int
    faults: tuple[str, ...] = ()

    @property
    def epoch_ms(self) -> int:
        return round(self.time.timestamp() * 1000)


def messages(fleet: Fleet, start: datetime, end: datetime) -> Iterator[SimMessage]:
    """Every message the fleet publishes in [start, end), in time order.

    Pure: the same fleet (scenario + seed) and range always give byte-identical messages,
    and a message does not depend on where the range starts.
    """
    if start.tzinfo is None or end.tzinfo is None:
        msg = "messages() needs timezone-aware start and end"
        raise ValueError(msg)
    start_ms, end_ms = _ms(start), _ms(end)
    context = SimContext(fleet)
    heap: list[tuple[int, int, int]] = []
    for dev in fleet.devices:
        k = dev.first_k_at_or_after(start_ms)
        due = dev.due_ms(k)
        if due < end_ms:
            heap.append((due, dev.index, k))
    heapq.heapify(heap)
    devices = fleet.devices
    while heap:
        due, index, k = heap[0]
        dev = devices[index]
        yield from _publishes(context, dev, k, due)
        following = dev.due_ms(k + 1)
        if following < end_ms:
            heapq.heapreplace(heap, (following, index, k + 1))
        else:
            heapq.heappop(heap)


def _publishes(context: SimContext, dev: SimDevice, k: int, due_ms: int) -> Iterator[SimMessage]:
    reading = context.reading(dev, k)
    faults = context.faults
    fault = message_fault(dev.key, k, faults)
    metrics = reading.metrics
    if fault == "out_of_range":
        metrics = out_of_range(dev.key, k, dev.device_type, metrics)
    stamp_ms = due_ms + dev.skew_ms
    seq = k - dev.first_k
    if dev.senml:
        payload = telemetry_senml(dev.device_id, stamp_ms, metrics)
    else:
        payload = telemetry_json(stamp_ms, seq, metrics)
    if fault == "malformed":
        payload = malform(dev.key, k, payload)
    when = datetime.fromtimestamp(due_ms / 1000.0, UTC)
    telemetry = topic(dev.device_id, TELEMETRY)
    yield SimMessage(when, dev.device_id, telemetry, payload, fault, seq, reading.faults)
    if is_duplicated(dev.key, k, faults):
        yield SimMessage(when, dev.device_id, telemetry, payload, "duplicate", seq, reading.faults)
    for kind, detail in reading.events:
        body = event(stamp_ms, kind, detail)
        yield SimMessage(
            when, dev.device_id, topic(dev.device_id, EVENTS), body, "event", seq, reading.faults
        )


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)
