"""`silobreak bench`: the whole set runs, reports every benchmark, and writes between markers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from silobreak.bench.suite import BEGIN, BENCHMARKS, END, times, write_into


def test_the_report_replaces_only_what_stands_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## Ingest\nmethod\n")
    write_into(doc, "new table\n")
    text = doc.read_text()
    assert text == f"# Benchmarks\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\n## Ingest\nmethod\n"
    write_into(doc, "newer table")
    assert text.replace("new table", "newer table") == doc.read_text()


def test_a_file_without_markers_gets_the_report_appended(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    write_into(doc, "table")
    assert doc.read_text() == f"# Benchmarks\n\n{BEGIN}\ntable\n{END}\n"
    fresh = tmp_path / "new.md"
    write_into(fresh, "table")
    assert fresh.read_text() == f"{BEGIN}\ntable\n{END}\n"


def test_ratios_read_the_right_way_round() -> None:
    assert times(3.86, "faster", "slower") == "3.9x faster"
    assert times(0.5, "faster", "slower") == "2.0x slower"
    assert times(0.0, "faster", "slower") == "—"


def test_the_docs_hold_one_report_block() -> None:
    text = Path("docs/benchmarks.md").read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    assert text.index(BEGIN) < text.index(END)


def test_usage_mistakes_are_one_line_each() -> None:
    for args, message in [
        (["--only", "nope"], "'nope' is not one of"),
        (["--quick", "--write", "x.md"], "--quick numbers are a smoke test"),
        (["--quick", "ingest"], "go with `silobreak bench` alone"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "silobreak", "bench", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert message in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_the_whole_set_runs_each_benchmark_against_its_baseline() -> None:
    """The quick profile: every benchmark of the set on its own servers, in about a minute."""
    done = subprocess.run(
        [sys.executable, "-m", "silobreak", "bench", "--quick"],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout
    assert "did not run" not in report
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ")]
    by_benchmark: dict[str, list[list[str]]] = {}
    for row in rows:
        by_benchmark.setdefault(row[0].removeprefix("| "), []).append(row)
    expected = {
        "ingest, 1 ingestor",
        "ingest, 2 ingestors",
        "streams fan-out",
        "store queries",
        "store bulk load",
        "simulator",
        "registry import",
        "overload",
    }
    assert expected <= set(by_benchmark)
    # Every benchmark with a baseline shows a number for it and a ratio.
    for name in ("ingest, 1 ingestor", "ingest, 2 ingestors", "simulator", "store queries"):
        for row in by_benchmark[name]:
            assert re.search(r"\d", row[3]), row
            assert re.search(r"\d+\.\d+x", row[4]), row
    # Correctness rides along: the fan-out delivered every granted reading, the overload lost
    # nothing; the baseline's late misses are shown.
    delivered = by_benchmark["streams fan-out"][1]
    ours, granted = (int(x.replace(",", "")) for x in delivered[2].split(" / "))
    assert ours == granted > 0
    lost = by_benchmark["overload"][0][2]
    assert re.fullmatch(r"0 / 0 of [\d,]+", lost), lost
    # One details block per benchmark, each with its own report.
    assert report.count("<details>") == len(BENCHMARKS)
    assert "Machine: " in report
