"""Publishing several times faster than ingest stores: bounded memory, nothing lost, it drains."""

from __future__ import annotations

import os

import pytest

from silobreak.bench.overload_bench import run_overload_bench

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

# Generous per message in hand: its payload and topic bytes, the decoded row and its floats
# come to ~0.6 KiB in CPython.
KIB_PER_MESSAGE = 1
# What else grows under load: the COPY buffer, one socket read held over a pause, allocator
# slack.
SLACK_KIB = 8 * 1024
# Every batch's write statement sleeps this long, so ingest stores at most
# 2,000 / 0.25 = 8,000 msg/s however fast this machine is; the publisher does ~45-75k msg/s
# here, busy or idle. The overload is certain by construction, not by relative speeds.
STORE_DELAY_S = 0.25


def test_an_overloaded_ingestor_holds_bounded_memory_loses_nothing_and_drains() -> None:
    # A receive maximum far above the batches in hand: the broker would let the ingestor take
    # 65,535 messages, and only its own pause (two sealed batches waiting) keeps it to 6,000.
    # CI publishes for 3 s against a store slowed to a known ceiling (the backlog then takes
    # ~20 s to drain); `silobreak bench overload` runs the 60 s version at full store speed
    # (docs/reliability.md).
    report = run_overload_bench(
        seconds=float(os.environ.get("SILOBREAK_OVERLOAD_S", "3")),
        publishers=1,
        devices=200,
        batch_size=2000,
        receive_maximum=65_535,
        store_delay_s=STORE_DELAY_S,
        log=print,
    )
    print(report.markdown())
    assert report.unrouted == 0
    assert report.ingest_rate <= 2000 / STORE_DELAY_S  # the slowed store held ingest back
    assert report.publish_rate > 2 * report.ingest_rate  # it was overloaded
    assert report.rejected == 0
    assert report.broker_dropped == 0
    assert report.stored == report.acked  # nothing lost (and none twice: a primary key)
    assert report.drain_seconds > 0
    assert report.bound_messages == 6000
    growth_kib = report.peak_rss_kib - report.idle_rss_kib
    assert growth_kib < report.bound_messages * KIB_PER_MESSAGE + SLACK_KIB, report.markdown()
