"""MQTT telemetry in, validated and tagged rows out, acknowledged after commit."""
