"""The OGC SensorThings API over the governed streams."""
