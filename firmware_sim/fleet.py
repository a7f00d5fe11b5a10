"""The simulated fleet: deterministic device ids, registry records, per-device firmware traits."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from devices.catalog import METER
from devices.registry import DeviceRecord
from firmware_sim.draws import Stream, device_key, uniform
from firmware_sim.scenario import District, Scenario

logger = logging.getLogger(__name__)

_SHORT_NAMES: Final = {
    "streetlight": "light",
    "traffic_light": "signal",
    "air_sensor": "air",
    "meter": "meter",
    "noise_sensor": "noise",
    "parking_bay": "bay",
}
# Readings of one device land up to this much after its grid slot (radio, scheduling);
# kept under a quarter interval so one device's readings never swap places.
_MAX_JITTER_MS: Final = 2_000
# Six decimals of a degree is ~0.1 m: finer than any registry map needs.
_COORD_DIGITS: Final = 6


@dataclass(frozen=True, slots=True)
class SimDevice:
    """One simulated device: its registry record and the traits of its firmware."""

    record: DeviceRecord
    index: int
    key: int
    interval_ms: int
    # Reading k is due at grid_offset_ms + k * interval_ms (plus jitter), k counted from 1970.
    grid_offset_ms: int
    first_k: int
    traffic_factor: float
    senml: bool
    enum_codes: bool
    skew_ms: int

    @property
    def device_id(self) -> str:
        return self.record.device_id

    @property
    def device_type(self) -> str:
        return self.record.device_type

    def slot_ms(self, k: int) -> int:
        """When reading k is taken (no jitter): the time its values describe."""
        return self.grid_offset_ms + k * self.interval_ms

    def due_ms(self, k: int) -> int:
        """When reading k is published: its slot plus a per-reading jitter."""
        jitter_cap = min(_MAX_JITTER_MS, self.interval_ms // 4)
        return self.slot_ms(k) + int(uniform(self.key, Stream.JITTER, k) * jitter_cap)

    def first_k_at_or_after(self, t_ms: int) -> int:
        """The first reading published at or after t_ms (never before installation)."""
        k = max(self.first_k, math.floor((t_ms - self.grid_offset_ms) / self.interval_ms) - 1)
        while self.due_ms(k) < t_ms:
            k += 1
        return k


@dataclass(frozen=True, slots=True)
class Fleet:
    """A city's simulated devices under one seed, in a stable order."""

    scenario: Scenario
    seed: int
    devices: tuple[SimDevice, ...]
    city_key: int
    _by_id: dict[str, SimDevice] = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.devices)

    def get(self, device_id: str) -> SimDevice | None:
        return self._by_id.get(device_id)

    def records(self) -> list[DeviceRecord]:
        """Registry records of every device, to register before simulating."""
        return [d.record for d in self.devices]


def build_fleet(scenario: Scenario, *, seed: int | None = None) -> Fleet:
    """The fleet of a scenario; the same scenario and seed always give the same fleet."""
    seed = scenario.seed if seed is None else seed
    devices: list[SimDevice] = []
    for district in scenario.districts:
        numbers: dict[str, int] = {}
        for service, type_name, medium, count in district.cells():
            short = _SHORT_NAMES.get(type_name, type_name) + (f"-{medium}" if medium else "")
            for _ in range(count):
                numbers[short] = n = numbers.get(short, 0) + 1
                device_id = f"{scenario.city.slug}-{short}-{district.name}-{n:04d}"
                devices.append(
                    _device(
                        scenario,
                        seed,
                        district,
                        service,
                        type_name,
                        medium,
                        device_id,
                        len(devices),
                    )
                )
    return Fleet(
        scenario=scenario,
        seed=seed,
        devices=tuple(devices),
        city_key=device_key(seed, f"city:{scenario.city.slug}"),
        _by_id={d.device_id: d for d in devices},
    )


def _device(
    scenario: Scenario,
    seed: int,
    district: District,
    service: str,
    type_name: str,
    medium: str | None,
    device_id: str,
    index: int,
) -> SimDevice:
    key = device_key(seed, device_id)
    south, west, north, east = district.bbox
    earliest, latest = scenario.installed_range()
    span = latest.timestamp() - earliest.timestamp()
    installed_s = earliest.timestamp() + int(uniform(key, Stream.INSTALL, 0) * span)
    interval_ms = round(scenario.intervals.of(type_name) * 1000)
    grid_offset_ms = int(uniform(key, Stream.GRID_OFFSET, 0) * interval_ms)
    record = DeviceRecord(
        device_id=device_id,
        device_type=type_name,
        service=service,
        district=district.name,
        lat=round(south + uniform(key, Stream.PLACE_LAT, 0) * (north - south), _COORD_DIGITS),
        lon=round(west + uniform(key, Stream.PLACE_LON, 0) * (east - west), _COORD_DIGITS),
        medium=medium if type_name == METER.name else None,
        installed_at=datetime.fromtimestamp(installed_s, UTC),
    )
    faults = scenario.faults
    skew_ms = 0
    if uniform(key, Stream.SKEW, 0) < faults.clock_skew:
        size = 1.0 + uniform(key, Stream.SKEW, 1) * (faults.clock_skew_max_s - 1.0)
        sign = 1 if uniform(key, Stream.SKEW, 2) < 0.5 else -1
        skew_ms = sign * round(max(size, 0.001) * 1000)
    return SimDevice(
        record=record,
        index=index,
        key=key,
        interval_ms=interval_ms,
        grid_offset_ms=grid_offset_ms,
        first_k=math.ceil((installed_s * 1000 - grid_offset_ms) / interval_ms),
        traffic_factor=district.traffic_factor,
        senml=uniform(key, Stream.SENML, 0) < faults.senml_share,
        enum_codes=uniform(key, Stream.ENUM_CODES, 0) < faults.enum_code_share,
        skew_ms=skew_ms,
    )
