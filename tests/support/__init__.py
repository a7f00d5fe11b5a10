"""Helpers for tests that are not fixtures: local servers the test suite starts itself."""
