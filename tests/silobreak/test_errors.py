"""The shell has one root error, and the command line says its own errors in one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import silobreak
from silobreak.backfill import csv_messages
from silobreak.errors import CommandFailed, SilobreakError


def test_every_error_the_shell_defines_derives_from_silobreak_error() -> None:
    outside = []
    for info in pkgutil.walk_packages(silobreak.__path__, "silobreak."):
        if info.name == "silobreak.__main__":  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not issubclass(value, SilobreakError)
            ):
                outside.append(f"{info.name}.{name}")
    assert outside == []
    assert issubclass(CommandFailed, SilobreakError)


def test_a_backfill_file_without_a_header_fails_with_the_shells_root_error(tmp_path: Path) -> None:
    bad = tmp_path / "readings.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(SilobreakError, match="needs a header with time and device_id columns"):
        list(csv_messages(bad))
