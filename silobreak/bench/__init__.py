"""Benchmarks: `silobreak bench` measures silobreak against a baseline in the same run."""
