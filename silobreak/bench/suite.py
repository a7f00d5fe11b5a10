"""`silobreak bench`: every benchmark in one run, each against its baseline, as one report.

Each benchmark below is also a subcommand of its own (`silobreak bench ingest`, ...); this
module runs them one after another with the sizes documented in docs/benchmarks.md, collects
one summary row per measure, and can write the result into that file between two markers,
with the machine it ran on.
"""

from __future__ import annotations

import re
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from silobreak.errors import SilobreakError

if TYPE_CHECKING:
    from silobreak.bench.machine import Machine


BEGIN: Final = "<!-- silobreak bench: begin -->"
END: Final = "<!-- silobreak bench: end -->"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the summary: a measure of silobreak next to its baseline's."""

    benchmark: str
    measure: str
    silobreak: str
    baseline: str
    versus: str  # silobreak against the baseline: "3.86x", "2.0x faster", or the target


@dataclass(slots=True)
class Outcome:
    name: str
    seconds: float = 0.0
    rows: list[Row] = field(default_factory=list)
    detail: str = ""  # the benchmark's own markdown report
    problems: list[str] = field(default_factory=list)  # lost or wrong results: a failed run
    error: str | None = None  # the benchmark could not run


@dataclass(frozen=True, slots=True)
class Profile:
    """The sizes of one whole-set run."""

    name: str
    ingest_messages: int
    ingest_runs: int
    latency_seconds: float
    import_devices: int
    import_runs: int
    store_devices: int
    store_days: int
    store_runs: int
    fanout_subscriptions: int
    fanout_seconds: float
    sim_devices: int
    sim_seconds: float
    sim_warmup: float
    sim_runs: int
    overload_seconds: float


FULL: Final = Profile(
    name="full",
    ingest_messages=200_000,
    ingest_runs=3,
    latency_seconds=10,
    import_devices=10_000,
    import_runs=3,
    store_devices=1000,
    store_days=30,
    store_runs=7,
    fanout_subscriptions=50,
    fanout_seconds=20,
    sim_devices=10_000,
    sim_seconds=30,
    sim_warmup=10,
    sim_runs=3,
    overload_seconds=60,
)

# A smoke run of the same code paths in a few minutes: its numbers are not worth recording.
QUICK: Final = Profile(
    name="quick",
    ingest_messages=20_000,
    ingest_runs=1,
    latency_seconds=2,
    import_devices=500,
    import_runs=1,
    store_devices=20,
    store_days=2,
    store_runs=2,
    fanout_subscriptions=5,
    fanout_seconds=3,
    sim_devices=200,
    sim_seconds=5,
    sim_warmup=2,
    sim_runs=1,
    overload_seconds=3,
)

Log = Callable[[str], None]


def times(ratio: float, better: str, worse: str) -> str:
    """`ratio` (baseline / silobreak, above 1 when silobreak does better) in words."""
    if ratio >= 1:
        return f"{ratio:.1f}x {better}"
    return f"{1 / ratio:.1f}x {worse}" if ratio > 0 else "—"


Bench = Callable[[Profile, Outcome, Log], None]


def _ingest(ingestors: int) -> Bench:
    def run(p: Profile, out: Outcome, log: Log) -> None:
        from silobreak.bench.ingest_bench import run_ingest_bench  # noqa: PLC0415

        report = run_ingest_bench(
            messages=p.ingest_messages,
            runs=p.ingest_runs,
            latency_seconds=p.latency_seconds if ingestors == 1 else 0,
            ingestors=ingestors,
            log=log,
        )
        out.detail = report.markdown(ingestors=ingestors)
        ours, base = report.median_rate("silobreak"), report.median_rate("baseline")
        ratio = statistics.median(report.paired_ratios())
        name = f"ingest, {ingestors} ingestor{'s' if ingestors > 1 else ''}"
        out.rows.append(
            Row(
                name,
                f"throughput, msg/s (median of {p.ingest_runs}; 4 readings each)",
                f"{ours:,.0f}",
                f"{base:,.0f}",
                f"{ratio:.2f}x",
            )
        )
        cpu = {s: report.median_cpu(s) for s in ("silobreak", "baseline")}
        out.rows.append(
            Row(
                name,
                "consumer CPU per message",
                f"{cpu['silobreak']:.1f} µs",
                f"{cpu['baseline']:.1f} µs",
                times(cpu["baseline"] / cpu["silobreak"], "less", "more"),
            )
        )
        lat = {x.system: x for x in report.latencies}
        if "silobreak" in lat and "baseline" in lat:
            a, b = lat["silobreak"], lat["baseline"]
            out.rows.append(
                Row(
                    name,
                    f"latency publish→commit at {a.rate:,.0f} msg/s, p50 / p99",
                    f"{a.p50_ms:.0f} / {a.p99_ms:.0f} ms",
                    f"{b.p50_ms:.0f} / {b.p99_ms:.0f} ms",
                    times(b.p99_ms / a.p99_ms, "lower p99", "higher p99"),
                )
            )

    return run


def _fanout(p: Profile, out: Outcome, log: Log) -> None:
    from silobreak.bench.fanout_bench import markdown, run_fanout_bench  # noqa: PLC0415

    results = {
        r.system: r
        for r in run_fanout_bench(
            subscriptions=p.fanout_subscriptions, seconds=p.fanout_seconds, log=log
        )
    }
    out.detail = markdown(list(results.values()))
    ours, base = results["silobreak"], results["baseline"]
    out.rows += [
        Row(
            "streams fan-out",
            f"{ours.subscriptions} subscriptions at {ours.rate:,.0f} readings/s: "
            "commit→delivery p50 / p99",
            f"{ours.p50_ms:.0f} / {ours.p99_ms:.0f} ms",
            f"{base.p50_ms:.0f} / {base.p99_ms:.0f} ms",
            times(base.p99_ms / ours.p99_ms, "lower p99", "higher p99") + " (target < 1 s)",
        ),
        Row(
            "streams fan-out",
            "readings delivered / granted (late readings included)",
            f"{ours.delivered:,} / {ours.expected:,}",
            f"{base.delivered:,} / {base.expected:,}",
            f"{ours.expected - base.delivered:,} missed by the baseline",
        ),
    ]
    if ours.delivered != ours.expected:
        out.problems.append(f"fan-out delivered {ours.delivered:,} of {ours.expected:,}")


def _store(p: Profile, out: Outcome, log: Log) -> None:
    from silobreak.bench.store_bench import run_store_bench  # noqa: PLC0415

    report = run_store_bench(
        devices=p.store_devices, days=p.store_days, interval=timedelta(minutes=5),
        runs=p.store_runs, log=log,
    )  # fmt: skip
    out.detail = report.markdown()
    charts = dict.fromkeys(t.chart for t in report.timings)
    for chart in charts:
        by_source = {t.source: t for t in report.timings if t.chart == chart}
        raw, agg = by_source["raw rows"], by_source["1-hour aggregate"]
        best, label = agg, "aggregates"
        if "released pools" in by_source:
            best, label = by_source["released pools"], "released pools"
        out.rows.append(
            Row(
                "store queries",
                f"{p.store_days}-day chart at 1 h, {chart.split(' (')[0]} "
                f"(median of {len(best.seconds)})",
                f"{best.median_ms:,.1f} ms ({label})",
                f"{raw.median_ms:,.1f} ms (raw rows)",
                times(raw.median_ms / best.median_ms, "faster", "slower"),
            )
        )
    load = report.load
    out.rows.append(
        Row(
            "store bulk load",
            f"{load.messages:,} simulated messages: simulate, validate, COPY",
            f"{load.rate:,.0f} msg/s",
            "—",
            f"COPY alone {load.stored / max(load.write_seconds, 1e-9):,.0f} rows/s",
        )
    )


def _simulator(p: Profile, out: Outcome, log: Log) -> None:
    from silobreak.bench.sim_bench import run_sim_bench  # noqa: PLC0415

    report = run_sim_bench(
        devices=p.sim_devices, seconds=p.sim_seconds, warmup=p.sim_warmup, runs=p.sim_runs,
        log=log,
    )  # fmt: skip
    out.detail = report.markdown()

    def us(system: str) -> float:
        return report.median(system, lambda r: r.us_per_message)

    def per_core(system: str) -> float:
        return report.median(system, lambda r: r.devices_per_core)

    out.rows += [
        Row(
            "simulator",
            f"{p.sim_devices:,} devices, a message each every 10 s: CPU per message",
            f"{us('silobreak'):.0f} µs",
            f"{us('aiomqtt'):.0f} µs",
            times(us("aiomqtt") / us("silobreak"), "less", "more"),
        ),
        Row(
            "simulator",
            "devices one core drives at that interval",
            f"~{per_core('silobreak'):,.0f}",
            f"~{per_core('aiomqtt'):,.0f}",
            f"{per_core('silobreak') / per_core('aiomqtt'):.1f}x",
        ),
    ]


def _import(p: Profile, out: Outcome, log: Log) -> None:
    from silobreak.bench.import_bench import run_import_bench  # noqa: PLC0415

    report = run_import_bench(devices=p.import_devices, runs=p.import_runs, log=log)
    out.detail = "| what | size | time |\n|---|---|---|\n" + report.markdown()
    out.rows.append(
        Row(
            "registry import",
            f"{p.import_devices:,} devices with credentials, broker reloaded "
            f"(median of {p.import_runs})",
            f"{statistics.median(report.seconds):.2f} s",
            "—",
            "target < 30 s",
        )
    )


def _overload(p: Profile, out: Outcome, log: Log) -> None:
    from silobreak.bench.overload_bench import run_overload_bench  # noqa: PLC0415

    report = run_overload_bench(seconds=p.overload_seconds, log=log)
    out.detail = report.markdown()
    out.rows += [
        Row(
            "overload",
            f"{p.overload_seconds:g} s publishing as fast as the broker takes: "
            "lost / dead-lettered",
            f"{report.lost:,} / {report.rejected:,} of {report.acked:,}",
            "—",
            f"published at {report.publish_rate / report.ingest_rate:.1f}x what ingest stored",
        ),
        Row(
            "overload",
            "ingest RSS idle / peak; time to drain the backlog",
            f"{report.idle_rss_kib / 1024:.0f} / {report.peak_rss_kib / 1024:.0f} MiB; "
            f"{report.drain_seconds:.0f} s",
            "—",
            f"bound: {report.bound_messages:,} messages in hand",
        ),
    ]
    if report.lost or report.unrouted or report.rejected:
        out.problems.append(
            f"overload: {report.lost:,} lost, {report.unrouted:,} unrouted, "
            f"{report.rejected:,} dead-lettered"
        )


BENCHMARKS: Final[dict[str, tuple[str, Bench]]] = {
    "ingest": ("`silobreak bench ingest`", _ingest(1)),
    "ingest2": ("`silobreak bench ingest --ingestors 2 --latency-seconds 0`", _ingest(2)),
    "fanout": ("`silobreak bench fanout`", _fanout),
    "store": ("`silobreak bench store`", _store),
    "simulator": ("`silobreak bench simulator`", _simulator),
    "import": ("`silobreak bench import`", _import),
    "overload": ("`silobreak bench overload`", _overload),
}


@dataclass(slots=True)
class SuiteReport:
    profile: Profile
    machine: Machine
    started: datetime
    load_before: str
    load_after: str = ""
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [
            f"{o.name}: {o.error}" if o.error else f"{o.name}: {p}"
            for o in self.outcomes
            for p in ([o.error] if o.error else o.problems)
        ]

    def markdown(self) -> str:
        took = sum(o.seconds for o in self.outcomes)
        names = " ".join(o.name for o in self.outcomes)
        command = "silobreak bench" + ("" if len(self.outcomes) == len(BENCHMARKS) else " --only …")
        title = f"### Latest whole-set run — {self.started:%Y-%m-%d %H:%M} UTC"
        where = (
            f"Machine: {self.machine.line()}. Broker, database, ingest, publishers and "
            f"baselines share it. 1-minute load average {self.load_before} at the start, "
            f"{self.load_after} at the end."
        )
        lines = [
            f"{title}, {self.profile.name} profile",
            "",
            f"`{command}` ({names}; {took / 60:.0f} min in all).",
            "",
            where,
            "",
            "| benchmark | measure | silobreak | baseline | silobreak vs baseline |",
            "|---|---|---|---|---|",
        ]
        for o in self.outcomes:
            if o.error:
                lines.append(f"| {o.name} | did not run: {o.error} | | | |")
            lines += [
                f"| {r.benchmark} | {r.measure} | {r.silobreak} | {r.baseline} | {r.versus} |"
                for r in o.rows
            ]
        for o in self.outcomes:
            if o.detail:
                summary = f"{o.name}: {BENCHMARKS[o.name][0]}, {o.seconds:.0f} s"
                lines += [
                    "",
                    f"<details><summary>{summary}</summary>",
                    "",
                    o.detail,
                    "",
                    "</details>",
                ]
        return "\n".join(lines)


def run_suite(
    *, profile: Profile = FULL, only: Sequence[str] = (), log: Log = print
) -> SuiteReport:
    """Run the chosen benchmarks (all by default) in order; a failing one does not stop the rest."""
    names = list(only) or list(BENCHMARKS)
    # Here, not at import: the CLI imports this module for the benchmark names alone.
    from silobreak.bench.machine import load_average, machine  # noqa: PLC0415

    report = SuiteReport(profile, machine(), datetime.now(UTC), load_average())
    for i, name in enumerate(names, 1):
        title, bench = BENCHMARKS[name]
        log(f"[{i}/{len(names)}] {name}: {title} ({profile.name} profile)")
        outcome = Outcome(name)
        started = time.monotonic()
        try:
            bench(profile, outcome, log)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            outcome.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            # A SilobreakError says what to do in its line (e.g. which extra to install).
            log(str(exc) if isinstance(exc, SilobreakError) else traceback.format_exc())
        outcome.seconds = time.monotonic() - started
        report.outcomes.append(outcome)
        log(f"[{i}/{len(names)}] {name}: done in {outcome.seconds:.0f} s")
    report.load_after = load_average()
    return report


def write_into(path: Path, section: str) -> None:
    """Replace what stands between the markers in `path` with `section`, or append both."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{BEGIN}\n{section.strip()}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    path.write_text(text.rstrip("\n") + "\n", encoding="utf-8")
