"""Registry records: what a device is, who owns it and when, and CSV import parsing."""

from __future__ import annotations

import bisect
import csv
import io
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Final

from devices.catalog import DEVICE_TYPES, MEDIA, METER, DeviceType, default_service
from devices.errors import DevicesError, RegistryImportError
from devices.topics import DEVICE_ID_RE, SERVICE_RE

REQUIRED_COLUMNS: Final = ("device_id", "device_type", "service")
KNOWN_COLUMNS: Final = (*REQUIRED_COLUMNS, "district", "lat", "lon", "medium", "installed_at")
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})
# Registry text goes into dashboards, CSV files and spreadsheets: a district is a name (letters
# of any script, digits, the punctuation of place names), never `=HYPERLINK(...)` or markup.
MAX_DISTRICT: Final = 100
_DISTRICT_PUNCTUATION: Final = frozenset(" .,'()/&-_")
# Free attributes (extra CSV columns) are kept as text; no control or format characters.
MAX_ATTRIBUTE: Final = 500


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as registered: identity, type, owner and where it stands."""

    device_id: str
    device_type: str
    service: str
    district: str | None = None
    lat: float | None = None
    lon: float | None = None
    medium: str | None = None
    installed_at: datetime | None = None
    # None takes the type's default (household meters carry personal data).
    personal_data: bool | None = None
    attributes: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # Where an imported record came from (CSV line, GeoJSON feature), for error messages.
    source_line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problem = record_problem(self)
        if problem is not None:
            raise DevicesError(f"device {self.device_id!r}: {problem}")

    @property
    def type(self) -> DeviceType:
        return DEVICE_TYPES[self.device_type]

    @property
    def is_personal_data(self) -> bool:
        if self.personal_data is not None:
            return self.personal_data
        return self.type.personal_data_default


def record_problem(rec: DeviceRecord) -> str | None:
    """Why this record cannot be registered, or None when it can."""
    if DEVICE_ID_RE.fullmatch(rec.device_id) is None:
        return "device_id must match [A-Za-z0-9._-]{1,64}"
    if rec.device_type not in DEVICE_TYPES:
        return f"unknown device_type {rec.device_type!r} (one of {', '.join(DEVICE_TYPES)})"
    if SERVICE_RE.fullmatch(rec.service) is None:
        return f"service {rec.service!r} must match [a-z][a-z0-9_-]*"
    if rec.medium is not None and rec.medium not in MEDIA:
        return f"unknown medium {rec.medium!r} (one of {', '.join(MEDIA)})"
    if rec.lat is not None and not (math.isfinite(rec.lat) and -90 <= rec.lat <= 90):
        return "lat must be between -90 and 90"
    if rec.lon is not None and not (math.isfinite(rec.lon) and -180 <= rec.lon <= 180):
        return "lon must be between -180 and 180"
    if rec.installed_at is not None and rec.installed_at.tzinfo is None:
        return "installed_at needs a UTC offset"
    if rec.district is not None and not is_district(rec.district):
        return (
            f"district {rec.district[:80]!r} must be 1 to {MAX_DISTRICT} letters, digits, spaces"
            " or . , ' ( ) / & - _, starting with a letter or digit"
        )
    for key, value in rec.attributes.items():
        if not _plain_text(key, MAX_ATTRIBUTE) or not _plain_text(value, MAX_ATTRIBUTE):
            return (
                f"attribute {key[:80]!r}: at most {MAX_ATTRIBUTE} characters, no control characters"
            )
    return None


def is_district(text: str) -> bool:
    """Whether `text` can be a district: a name, never markup or a spreadsheet formula."""
    return (
        0 < len(text) <= MAX_DISTRICT
        and text[0].isalnum()
        and all(c.isalnum() or c in _DISTRICT_PUNCTUATION for c in text)
    )


def _plain_text(text: str, limit: int) -> bool:
    return len(text) <= limit and not any(unicodedata.category(c) in {"Cc", "Cf"} for c in text)


def new_record(
    device_id: str,
    device_type: str,
    service: str | None = None,
    **fields: object,
) -> DeviceRecord:
    """A record with the type's default service when none is given."""
    medium = fields.get("medium")
    if device_type == METER.name and medium is None:
        fields["medium"] = medium = "electricity"
    if device_type not in DEVICE_TYPES:
        raise DevicesError(
            f"device {device_id!r}: unknown device_type {device_type!r} "
            f"(one of {', '.join(DEVICE_TYPES)})"
        )
    svc = service or default_service(device_type, medium if isinstance(medium, str) else None)
    return DeviceRecord(device_id, device_type, svc, **fields)  # type: ignore[arg-type]


def parse_csv(text: str) -> list[DeviceRecord]:
    """Parse a registry CSV (columns by header name); any bad row rejects the whole file."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise RegistryImportError([(1, f"missing column(s): {', '.join(missing)}")])
    reader.fieldnames = header
    records: list[DeviceRecord] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        try:
            rec = replace(_row_record(row), source_line=line)
        except (DevicesError, ValueError) as exc:
            problems.append((line, str(exc)))
            continue
        if rec.device_id in first_line:
            problems.append(
                (line, f"device {rec.device_id!r} also on line {first_line[rec.device_id]}")
            )
            continue
        first_line[rec.device_id] = line
        records.append(rec)
    if problems:
        raise RegistryImportError(problems)
    return records


def _row_record(row: Mapping[str, str | None]) -> DeviceRecord:
    def opt(name: str) -> str | None:
        value = (row.get(name) or "").strip()
        return value or None

    device_id = opt("device_id")
    device_type = opt("device_type")
    service = opt("service")
    if device_id is None:
        raise DevicesError("missing device_id")
    if device_type is None:
        raise DevicesError(f"device {device_id!r}: missing device_type")
    if service is None:
        raise DevicesError(f"device {device_id!r}: missing service")
    lat, lon, installed = opt("lat"), opt("lon"), opt("installed_at")
    extra = {
        k: v.strip()
        for k, v in row.items()
        if k and k not in KNOWN_COLUMNS and isinstance(v, str) and v.strip()
    }
    personal = extra.pop("personal_data", None)
    return DeviceRecord(
        device_id=device_id,
        device_type=device_type,
        service=service,
        district=opt("district"),
        lat=_float(lat, "lat"),
        lon=_float(lon, "lon"),
        medium=opt("medium") or ("electricity" if device_type == METER.name else None),
        installed_at=datetime.fromisoformat(installed) if installed else None,
        personal_data=None if personal is None else personal.lower() in {"1", "true", "yes"},
        attributes=MappingProxyType(extra),
    )


def _float(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise DevicesError(f"{name} {value!r} is not a number") from None


@dataclass(frozen=True, slots=True)
class KnownDevice:
    """What ingest needs of one active device: its type and who owned it when."""

    device_id: str
    device_type: DeviceType
    # (valid_from, service), oldest first; the first entry also covers all time before it.
    owners: tuple[tuple[datetime, str], ...]
    medium: str | None = None
    district: str | None = None

    def service_at(self, time: datetime) -> str:
        owners = self.owners
        if len(owners) == 1:
            return owners[0][1]
        i = bisect.bisect_right(owners, time, key=lambda o: o[0]) - 1
        return owners[max(i, 0)][1]


class RegistrySnapshot:
    """An immutable view of the active devices, read by ingest on its hot path."""

    __slots__ = ("_devices", "version")

    def __init__(self, devices: Iterable[KnownDevice], version: object = None) -> None:
        self._devices: dict[str, KnownDevice] = {d.device_id: d for d in devices}
        self.version = version

    def get(self, device_id: str) -> KnownDevice | None:
        return self._devices.get(device_id)

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices
