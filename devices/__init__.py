"""Device types, payload schemas, the topic scheme and the registry records."""

from devices.catalog import DEVICE_TYPES, DeviceType, Kind, MetricSpec
from devices.errors import DevicesError, RegistryImportError
from devices.registry import DeviceRecord, KnownDevice, RegistrySnapshot, new_record, parse_csv

__all__ = [
    "DEVICE_TYPES",
    "DeviceRecord",
    "DeviceType",
    "DevicesError",
    "Kind",
    "KnownDevice",
    "MetricSpec",
    "RegistryImportError",
    "RegistrySnapshot",
    "new_record",
    "parse_csv",
]
