"""The silobreak application shell: CLI, settings and process wiring."""
