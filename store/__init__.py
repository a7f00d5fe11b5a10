"""The time-series store: schema, migrations, write path, registry and read path."""
