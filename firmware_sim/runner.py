"""The fleet runner: publishes the simulated city to an MQTT broker as its devices would."""

from __future__ import annotations

import heapq
import logging
import random
import selectors
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, Literal

from firmware_sim.clock import SimClock
from firmware_sim.errors import BrokerError, SimError
from firmware_sim.fleet import Fleet
from firmware_sim.generator import SimMessage, messages
from firmware_sim.link import MQTT_VERSIONS, Link, MqttVersion, parse_broker_url
from firmware_sim.payloads import status
from retries import Policy

logger = logging.getLogger(__name__)

Mode = Literal["per_device", "load"]

# Reconnect backoff: 0.5 s doubling to 30 s, each delay jittered down to half so a fleet
# cut off at once does not come back at once. A device whose telemetry no subscriber took
# (PUBACK 0x10, MQTT 5) holds its readings and tries one again after the same backoff: a city
# whose ingestors are gone sends one message per device every 15-30 s, not its buffer in a loop.
RECONNECT: Final = Policy(first=0.5, cap=30.0)
# A link's attempts are counted up to this: the delay has long reached the cap by then.
_MAX_ATTEMPTS: Final = 16
# How often at most the runner says that devices hold their readings.
_HOLD_LOG_EVERY_S: Final = 60.0
# Connections opened per loop turn: keeps CONNACKs and publishes flowing during a storm.
_CONNECTS_PER_TURN: Final = 200
# Connections awaiting their CONNACK at most. Mosquitto listens with a backlog of 100; past it
# the kernel drops the SYN (TcpExtListenOverflows) and that device waits a second for the
# retry. Connecting 10,000 devices, 200 a turn overflowed it 6-13 times a run; 64 never did.
_MAX_CONNECTING: Final = 64
# Seconds of (blocking) connects per loop turn, so publishing never stalls for long.
_CONNECT_TURN_S: Final = 0.2
# Messages dispatched per loop turn before sockets get serviced again.
_DISPATCH_PER_TURN: Final = 500
# paho sends PINGREQ from loop_misc(); every 5 s is plenty for a 60 s keepalive and costs
# ~5 µs per connection (10k devices: 1% of a core instead of 5% at every second).
_MISC_EVERY_S: Final = 5.0
# A turn that would wait less than this waits this long, deaf to the sockets, and then takes
# every due message and acknowledgement at once: at 1,000 msg/s (10,000 devices) a turn per
# message cost ~185 µs of CPU a message, 10 ms turns ~130 µs (`silobreak bench simulator`).
# A device then publishes up to 10 ms late, well inside its own 2 s jitter.
_MIN_TURN_S: Final = 0.01
# Longest sleep, so stop() is honoured quickly.
_MAX_WAIT_S: Final = 0.25
# The simulation has no natural end; a century is "forever" for a bounded run.
_FOREVER: Final = timedelta(days=36_500)


@dataclass(slots=True)
class RunStats:
    """What a run did; `acknowledged + refused + unsent + dropped` accounts for every message.

    `acknowledged` is what the broker published; `refused` what it acknowledged with a failure
    code (MQTT 5: 0x87 not authorized, 0x97 quota exceeded, ...), which was not published.
    `unrouted` counts telemetry PUBACKs with 0x10 (MQTT 5: no subscriber took it), each
    message of which went back to its device's buffer to be sent again.
    """

    generated: int = 0
    acknowledged: int = 0
    refused: int = 0
    buffered: int = 0
    dropped: int = 0
    unsent: int = 0
    unrouted: int = 0
    connects: int = 0
    connect_failures: int = 0
    online: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    sim_start: datetime | None = None
    sim_end: datetime | None = None


class FleetRunner:
    """Publishes `messages(fleet, ...)` over MQTT at the pace of a simulated clock.

    mode "per_device": one connection per device, client id and username = device_id
    (password from `passwords`, else the URL's credentials), retained online status at
    connect and an offline last will. mode "load": the devices share `connections`
    connections using the URL's credentials; they announce online/offline but have no will.

    mqtt_version "5": a device treats telemetry acknowledged with 0x10 (no matching
    subscribers) as not delivered, keeps it in its buffer and sends it again after a backoff
    (see `Link`). "3.1.1": the broker's PUBACK cannot say so, and such messages are lost.
    Devices in `leave_out` (decommissioned ones) do not run: their messages are skipped.
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        url: str,
        mode: Mode = "per_device",
        connections: int = 4,
        passwords: Mapping[str, str] | None = None,
        speed: float = 1.0,
        start: datetime | None = None,
        max_messages: int | None = None,
        duration: timedelta | None = None,
        buffer_limit: int = 1000,
        keepalive: int = 60,
        inflight: int = 20,
        drain_timeout: timedelta = timedelta(seconds=10),
        client_prefix: str = "silobreak-sim",
        seed: int = 0,
        mqtt_version: MqttVersion = "3.1.1",
        leave_out: Collection[str] = (),
    ) -> None:
        if mode not in ("per_device", "load"):
            raise SimError(f"mode must be 'per_device' or 'load', got {mode!r}")
        if mqtt_version not in MQTT_VERSIONS:
            raise SimError(f"mqtt_version must be one of {MQTT_VERSIONS}, got {mqtt_version!r}")
        if connections < 1 or buffer_limit < 1 or inflight < 1:
            raise SimError("connections, buffer_limit and inflight must be at least 1")
        self.fleet = fleet
        self._broker = parse_broker_url(url)
        self._mode: Mode = mode
        self._connections = connections
        self._passwords = passwords
        self._speed = speed
        self._start = start
        self._max_messages = max_messages
        self._duration = duration
        self._buffer_limit = buffer_limit
        self._keepalive = keepalive
        self._inflight = inflight
        self._drain_timeout = drain_timeout.total_seconds()
        self._client_prefix = client_prefix
        self._mqtt_version: MqttVersion = mqtt_version
        self._leave_out = frozenset(leave_out)
        # Backoff jitter only, never security: a seeded generator keeps runs reproducible.
        self._random = random.Random(seed)  # noqa: S311
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._retries: list[tuple[float, int]] = []
        # (when, link index) of links holding their messages after a 0x10, by when they resume.
        self._holds: list[tuple[float, int]] = []
        self._next_hold_log = 0.0
        self._links: list[Link] = []
        self._link_of: dict[str, Link] = {}
        self._index_of: dict[int, int] = {}
        self._closing = False
        self._clock: SimClock | None = None
        self._pending_writes: set[Link] = set()
        self._connecting: set[Link] = set()
        self.stats = RunStats()

    def progress(self) -> RunStats:
        """A snapshot of the counters of a running `run()` (for monitors and tests)."""
        snapshot = replace(self.stats)
        links = list(self._links)
        snapshot.acknowledged = sum(link.acked for link in links)
        snapshot.refused = sum(link.refused for link in links)
        snapshot.dropped = sum(link.dropped for link in links)
        snapshot.unsent = sum(len(link.backlog) + link.outstanding for link in links)
        snapshot.unrouted = sum(link.unrouted for link in links)
        snapshot.online = sum(link.connected for link in links)
        return snapshot

    def stop(self) -> None:
        """Ask a running `run()` to stop generating, drain and disconnect (thread-safe)."""
        self._stop.set()

    def run(self) -> RunStats:
        """Run until max_messages, duration or stop(); then drain, go offline, return stats."""
        cpu0, wall0 = time.process_time(), time.monotonic()
        self._build_links()
        try:
            self._connect_all(deadline=wall0 + 30.0)
            clock = self._clock = SimClock(self._start, self._speed)
            self.stats.sim_start = clock.start
            self._produce(clock, messages(self.fleet, clock.start, clock.start + _FOREVER))
            self._drain(time.monotonic() + self._drain_timeout)
            self._goodbye(clock)
        except KeyboardInterrupt:
            logger.info("interrupted: leaving without draining")
        finally:
            self._finish(cpu0, wall0)
        return self.stats

    # phases --------------------------------------------------------------------------------

    def _build_links(self) -> None:
        will = status("offline", None)
        devices = [d for d in self.fleet.devices if d.device_id not in self._leave_out]
        groups: list[tuple[str, tuple[str, ...]]]
        if self._mode == "per_device":
            groups = [(d.device_id, (d.device_id,)) for d in devices]
        else:
            n = min(self._connections, max(1, len(devices)))
            groups = [
                (f"{self._client_prefix}-{i}", tuple(d.device_id for d in devices[i::n]))
                for i in range(n)
            ]
        for client_id, device_ids in groups:
            username, password = self._broker.username, self._broker.password
            if self._mode == "per_device" and self._passwords is not None:
                username, password = client_id, self._passwords.get(client_id)
            link = Link(
                client_id=client_id,
                device_ids=device_ids,
                broker=self._broker,
                username=username,
                password=password,
                selector=self._selector,
                keepalive=self._keepalive,
                inflight=self._inflight,
                capacity=self._buffer_limit * len(device_ids),
                will=will if self._mode == "per_device" else None,
                on_lost=self._lost,
                online=self._online_status,
                pending_writes=self._pending_writes,
                mqtt_version=self._mqtt_version,
                on_hold=self._hold,
            )
            self._index_of[id(link)] = len(self._links)
            self._links.append(link)
            for device_id in device_ids:
                self._link_of[device_id] = link
        self._retries = [(0.0, i) for i in range(len(self._links))]

    def _connect_all(self, deadline: float) -> None:
        """Open every connection before the clock starts, so no device begins offline."""
        while self._retries and self._retries[0][0] <= 0.0 and not self._stop.is_set():
            self._reconnect_due(time.monotonic())
            # Returns as soon as a CONNACK arrives: room for the next connections.
            self._service(0.05)
        while time.monotonic() < deadline and not self._stop.is_set():
            if all(link.connected for link in self._links):
                return
            self._service(0.05)
            self._reconnect_due(time.monotonic())
        if not any(link.connected for link in self._links):
            raise BrokerError(f"no device could connect to {self._broker} within 30 s")

    def _produce(self, clock: SimClock, stream: Iterator[SimMessage]) -> None:
        ends_at = (
            None if self._duration is None else time.monotonic() + self._duration.total_seconds()
        )
        next_misc = time.monotonic() + _MISC_EVERY_S
        pending = next(stream, None)
        while pending is not None and not self._stop.is_set():
            now = time.monotonic()
            if ends_at is not None and now >= ends_at:
                return
            self._reconnect_due(now)
            self._resume_due(now)
            if now >= next_misc:
                self._misc()
                next_misc = now + _MISC_EVERY_S
            real_now = time.time()
            sent = 0
            while pending is not None and sent < _DISPATCH_PER_TURN:
                due = clock.real_time_of(pending.epoch_ms / 1000.0)
                if due > real_now:
                    break
                self._dispatch(pending)
                sent += 1
                if self._max_messages is not None and self.stats.generated >= self._max_messages:
                    return
                pending = next(stream, None)
            wait = 0.0 if sent == _DISPATCH_PER_TURN or pending is None else _MAX_WAIT_S
            if pending is not None and wait > 0.0:
                wait = min(wait, max(0.0, clock.real_time_of(pending.epoch_ms / 1000.0) - real_now))
            if 0.0 < wait < _MIN_TURN_S:
                self._stop.wait(_MIN_TURN_S)
                wait = 0.0
            self._service(wait)

    def _dispatch(self, message: SimMessage) -> None:
        link = self._link_of.get(message.device_id)
        if link is None:  # left out of the run
            return
        self.stats.generated += 1
        self.stats.sim_end = message.time
        if not link.connected:
            self.stats.buffered += 1
        link.send(message.topic, message.payload)

    def _drain(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if all(link.idle for link in self._links):
                return
            self._reconnect_due(time.monotonic())
            self._resume_due(time.monotonic())
            self._service(0.05)

    def _goodbye(self, clock: SimClock) -> None:
        self._closing = True
        offline = status("offline", round(clock.now() * 1000))
        for link in self._links:
            if link.connected:
                link.publish_status(offline)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(
            link.status_mids for link in self._links if link.connected
        ):
            self._service(0.05)
        for link in self._links:
            link.connected = False
            link.client.disconnect()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self._selector.get_map():
            self._service(0.05)

    def _finish(self, cpu0: float, wall0: float) -> None:
        self.stats.online = sum(link.connected for link in self._links)
        for link in self._links:
            self.stats.acknowledged += link.acked
            self.stats.refused += link.refused
            self.stats.dropped += link.dropped
            self.stats.unsent += len(link.backlog) + link.outstanding
            self.stats.unrouted += link.unrouted
            if link.client.socket() is not None:
                link.client.disconnect()
                link.client.loop_write()
        self._selector.close()
        if self.stats.refused:
            logger.warning(
                "%d message(s) were refused by the broker (PUBACK failure code, e.g. 0x87"
                " not authorized) and not published",
                self.stats.refused,
            )
        if self.stats.unrouted:
            logger.info(
                "%d telemetry message(s) were acknowledged as routed to no subscriber (0x10)"
                " and sent again",
                self.stats.unrouted,
            )
        self.stats.cpu_s = time.process_time() - cpu0
        self.stats.wall_s = time.monotonic() - wall0

    # the loop ------------------------------------------------------------------------------

    def _service(self, timeout: float) -> None:
        self._write_pending()
        if not self._selector.get_map():
            if timeout > 0.0:
                self._stop.wait(timeout)
            return
        for key, mask in self._selector.select(timeout):
            link: Link = key.data
            link.service(mask)
        self._write_pending()

    def _write_pending(self) -> None:
        while self._pending_writes:
            self._pending_writes.pop().write()

    def _misc(self) -> None:
        for link in self._links:
            if link.client.socket() is not None:
                link.client.loop_misc()

    def _reconnect_due(self, now: float) -> None:
        if not self._retries or self._retries[0][0] > now:
            return
        self._connecting = {
            link
            for link in self._connecting
            if not link.connected and link.client.socket() is not None
        }
        budget = min(_CONNECTS_PER_TURN, _MAX_CONNECTING - len(self._connecting))
        # connect() blocks (up to CONNECT_TIMEOUT_S against a black hole): cap the turn.
        turn_ends = time.monotonic() + _CONNECT_TURN_S
        while self._retries and self._retries[0][0] <= now and budget > 0:
            if time.monotonic() > turn_ends:
                return
            _, i = heapq.heappop(self._retries)
            link = self._links[i]
            if link.connected or link.client.socket() is not None:
                continue
            budget -= 1
            try:
                link.connect()
                self._connecting.add(link)
                self.stats.connects += 1
            except BrokerError as exc:
                self.stats.connect_failures += 1
                logger.debug("%s", exc)
                self._schedule_retry(i, now)

    def _hold(self, link: Link) -> None:
        """A link got a 0x10 for telemetry: resume it after its backoff (jittered down)."""
        now = time.monotonic()
        if not self._holds and now >= self._next_hold_log:
            logger.warning(
                "the broker routed telemetry to no subscriber (PUBACK 0x10; is ingest"
                " subscribed?): devices keep it buffered and try again with a backoff"
            )
            self._next_hold_log = now + _HOLD_LOG_EVERY_S
        link.hold_attempts = min(link.hold_attempts + 1, _MAX_ATTEMPTS)
        when = now + RECONNECT.delay(link.hold_attempts, self._random)
        heapq.heappush(self._holds, (when, self._index_of[id(link)]))

    def _resume_due(self, now: float) -> None:
        while self._holds and self._holds[0][0] <= now:
            _, i = heapq.heappop(self._holds)
            self._links[i].resume()

    def _schedule_retry(self, i: int, now: float) -> None:
        link = self._links[i]
        link.attempts = min(link.attempts + 1, _MAX_ATTEMPTS)
        heapq.heappush(self._retries, (now + RECONNECT.delay(link.attempts, self._random), i))

    def _online_status(self) -> bytes:
        if self._clock is not None:
            return status("online", round(self._clock.now() * 1000))
        # Connecting before the clock starts: the simulation is about to begin at its start.
        began = self._start.timestamp() if self._start is not None else time.time()
        return status("online", round(min(began, time.time()) * 1000))

    def _lost(self, link: Link) -> None:
        if not self._closing:
            self._schedule_retry(self._index_of[id(link)], time.monotonic())
