"""The streams package has one root error: every error it defines derives from StreamsError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import streams
from streams.errors import StreamsError
from streams.live import FeedClosed


def test_every_error_the_streams_package_defines_derives_from_streams_error() -> None:
    outside = []
    for info in pkgutil.walk_packages(streams.__path__, "streams."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and not issubclass(value, StreamsError)
            ):
                outside.append(f"{info.name}.{name}")
    assert outside == []


def test_a_closed_feed_keeps_its_reason() -> None:
    error = FeedClosed("grant_revoked")
    assert isinstance(error, StreamsError)
    assert (error.reason, str(error)) == ("grant_revoked", "grant_revoked")
