"""`silobreak bench ingest --ha`'s report: paired ratios and the table it prints.

The benchmark itself starts etcd, Patroni and PostgreSQL; it is run by hand and its numbers
are in docs/benchmarks.md. The cluster it starts is the one tests/faults/test_ha_failover.py
runs.
"""

from __future__ import annotations

from silobreak.bench.ha_bench import PAIR, SINGLE, Failover, HaReport
from silobreak.bench.ingest_bench import Latency, Run


def _run(target: str, seconds: float) -> Run:
    return Run(target, 10_000, seconds, seconds, 10.0)


def test_the_ratio_pairs_runs_in_the_order_they_alternated() -> None:
    report = HaReport(
        runs=[_run(SINGLE, 1.0), _run(PAIR, 2.0), _run(SINGLE, 2.0), _run(PAIR, 2.0)],
        latencies=[
            Latency(SINGLE, 1000, 5000, 50, 90, 95),
            Latency(PAIR, 1000, 5000, 55, 120, 130),
        ],
        failover=Failover(messages=60_000, stored=60_000, seconds=14.7),
    )
    assert report.paired_ratios() == [0.5, 1.0]
    assert report.median_rate(SINGLE) == 7_500
    text = report.markdown()
    assert "| single PostgreSQL | 2 | 10,000 | 7,500 | 10,000, 5,000 |" in text
    assert "| Patroni, synchronous | 2 | 10,000 | 5,000 | 5,000, 5,000 |" in text
    assert "per paired run: 0.50x, 1.00x; median 0.75x." in text
    assert "| Patroni, synchronous | 1,000 | 5,000 | 55 ms | 120 ms | 130 ms |" in text
    assert "14.7 s later; 60,000 of 60,000 messages stored (0 missing)." in text
