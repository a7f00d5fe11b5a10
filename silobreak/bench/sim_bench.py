"""`silobreak bench simulator`: devices driven per core by the fleet runner, against aiomqtt.

Each run starts a Mosquitto of its own and one child process that connects N devices (one
connection each) and publishes one message per device every `interval` seconds; once every
device is connected and a warm-up has passed, the child measures acknowledged messages and
its own CPU (and the broker's) over a fixed window. Systems alternate run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from silobreak.bench.machine import describe_machine
from silobreak.errors import SilobreakError
from silobreak.local import LocalMosquitto

SYSTEMS: Final = ("silobreak", "aiomqtt")
# File descriptors besides the device sockets: the interpreter, the broker's own files.
_SPARE_FDS: Final = 200
# Connecting 10,000 devices takes seconds; a broker that refuses them fails well before this.
_CONNECT_TIMEOUT_S: Final = 300.0
# After its report a child disconnects its fleet; past this it is killed (nothing is measured).
_TEARDOWN_S: Final = 60.0
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class SimRun:
    system: str
    devices: int
    interval: float
    connect_s: float  # from start until every device is connected
    seconds: float  # the measured window
    messages: int  # acknowledged by the broker within the window
    cpu_s: float  # the fleet process's CPU (user + system) within the window
    system_cpu_s: float  # of which in the kernel (socket calls)
    broker_cpu_s: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def target(self) -> float:
        return self.devices / self.interval

    @property
    def core_share(self) -> float:
        return self.cpu_s / self.seconds

    @property
    def us_per_message(self) -> float:
        return self.cpu_s / max(1, self.messages) * 1e6

    @property
    def devices_per_core(self) -> float:
        """Devices at this interval whose messages one whole core would carry."""
        return self.rate * self.interval / max(self.core_share, 1e-9)


@dataclass(slots=True)
class SimReport:
    runs: list[SimRun] = field(default_factory=list)

    def median(self, system: str, value: Callable[[SimRun], float]) -> float:
        return statistics.median(value(r) for r in self.runs if r.system == system)

    def markdown(self) -> str:
        first = self.runs[0]
        machine = (
            f"Machine: {describe_machine()}; broker and fleet on the same machine. "
            f"{first.devices:,} devices, one connection each, one QoS 1 message every "
            f"{first.interval:g} s ({first.target:,.0f} msg/s offered), measured over "
            f"{first.seconds:.0f} s after every device connected. Medians of the runs."
        )
        header = (
            "| system | runs | msg/s | fleet CPU (% of a core) | µs/msg | devices per core "
            "| connect all (s) | broker CPU (% of a core) |"
        )
        lines = [
            machine,
            "",
            header,
            "|---|---|---|---|---|---|---|---|",
        ]
        for system in dict.fromkeys(r.system for r in self.runs):
            runs = [r for r in self.runs if r.system == system]
            m = self.median
            lines.append(
                f"| {system} | {len(runs)} | {m(system, lambda r: r.rate):,.0f} "
                f"| {100 * m(system, lambda r: r.core_share):.0f}% "
                f"| {m(system, lambda r: r.us_per_message):.0f} "
                f"| {m(system, lambda r: r.devices_per_core):,.0f} "
                f"| {m(system, lambda r: r.connect_s):.1f} "
                f"| {100 * m(system, lambda r: r.broker_cpu_s / r.seconds):.0f}% |"
            )
        lines += ["", "Each run (system: msg/s, fleet CPU % of a core, of which in the kernel):"]
        lines += [
            f"- {r.system}: {r.rate:,.0f} msg/s, {100 * r.core_share:.0f}% "
            f"({100 * r.system_cpu_s / r.seconds:.0f}%)"
            for r in self.runs
        ]
        return "\n".join(lines)


def run_sim_bench(
    *,
    devices: int = 10_000,
    interval: float = 10.0,
    seconds: float = 30.0,
    warmup: float = 10.0,
    runs: int = 3,
    systems: tuple[str, ...] = SYSTEMS,
    log: Callable[[str], None] = print,
) -> SimReport:
    """Run each system `runs` times, alternately, each on a fresh broker.

    SilobreakError, naming the `bench` extra, when the aiomqtt baseline is asked for and
    aiomqtt is not installed (it is not a dependency of the platform itself).
    """
    if "aiomqtt" in systems:
        require_aiomqtt()
    raise_fd_limit(devices + _SPARE_FDS)
    report = SimReport()
    root = Path(tempfile.mkdtemp(prefix="silobreak-simbench-"))
    try:
        for i in range(runs):
            for system in systems:
                run = _one_run(system, root / f"{system}-{i}", devices, interval, seconds, warmup)
                log(
                    f"run {i + 1}/{runs} {system}: {run.rate:,.0f} msg/s of {run.target:,.0f}, "
                    f"{100 * run.core_share:.0f}% of a core, {run.us_per_message:.0f} µs/msg, "
                    f"connected in {run.connect_s:.1f} s"
                )
                report.runs.append(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report


def require_aiomqtt() -> None:
    """SilobreakError naming the extra to install when aiomqtt cannot be imported."""
    try:
        importlib.import_module("aiomqtt")
    except ImportError:
        raise SilobreakError(
            "the simulator benchmark's baseline needs aiomqtt: pip install 'silobreak[bench]'"
            " (or run `silobreak bench simulator --no-baseline`)"
        ) from None


def raise_fd_limit(needed: int) -> None:
    """Raise this process's open-file limit (inherited by the broker and the fleet) to `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise OSError(
            f"{needed} open files needed but the hard limit is {hard}: raise it (ulimit -Hn, "
            "or LimitNOFILE) or bench fewer --devices"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _one_run(
    system: str, base: Path, devices: int, interval: float, seconds: float, warmup: float
) -> SimRun:
    # A broker per run: no retained statuses or TIME_WAIT sockets left from the previous one.
    with LocalMosquitto(base, extra_config="max_connections -1", persistence=False) as broker:
        pid = int(_wait_for_file(base / "mosquitto.pid").read_text())
        args = ["--port", str(broker.port), "--devices", str(devices), "--interval", str(interval)]
        args += ["--seconds", str(seconds), "--warmup", str(warmup), "--broker-pid", str(pid)]
        child = subprocess.Popen(
            [sys.executable, "-m", "silobreak.bench.sim_bench", system, *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"{system} fleet exited ({child.wait()}) without a report")
            child.wait(_TEARDOWN_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return SimRun(**json.loads(line))


def _wait_for_file(path: Path) -> Path:
    deadline = time.monotonic() + 10.0
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)
    return path


# -- the child: one fleet, measured from inside ----------------------------------------------


class _Window:
    """Samples the fleet's acknowledged count, its CPU and the broker's at two moments."""

    def __init__(self, broker_pid: int, acknowledged: Callable[[], int]) -> None:
        self._broker_pid = broker_pid
        self._acknowledged = acknowledged
        self._start: tuple[float, int, float, float, float] = (0.0, 0, 0.0, 0.0, 0.0)

    def sample(self) -> tuple[float, int, float, float, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        fields = Path(f"/proc/{self._broker_pid}/stat").read_text().rsplit(")", 1)[1].split()
        broker = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        cpu = usage.ru_utime + usage.ru_stime
        return time.monotonic(), self._acknowledged(), cpu, usage.ru_stime, broker

    def begin(self) -> None:
        self._start = self.sample()

    def end(self) -> dict[str, float]:
        t1, acked1, cpu1, sys1, broker1 = self.sample()
        t0, acked0, cpu0, sys0, broker0 = self._start
        return {
            "seconds": t1 - t0,
            "messages": acked1 - acked0,
            "cpu_s": cpu1 - cpu0,
            "system_cpu_s": sys1 - sys0,
            "broker_cpu_s": broker1 - broker0,
        }


def _fleet(devices: int, interval: float) -> Any:
    from firmware_sim import build_fleet, default_scenario, scale_scenario  # noqa: PLC0415
    from firmware_sim.scenario import Intervals  # noqa: PLC0415

    every = Intervals(
        streetlight=interval, traffic_light=interval, air_sensor=interval, meter=interval
    )
    city = scale_scenario(default_scenario(), devices)
    return build_fleet(city.model_copy(update={"intervals": every}))


def _report(
    system: str, opts: argparse.Namespace, connect_s: float, window: dict[str, float]
) -> None:
    result = {"system": system, "devices": opts.devices, "interval": opts.interval}
    result |= {"connect_s": connect_s, **window}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _child_silobreak(opts: argparse.Namespace) -> None:
    from firmware_sim import FleetRunner  # noqa: PLC0415

    fleet = _fleet(opts.devices, opts.interval)
    runner = FleetRunner(fleet, url=f"mqtt://127.0.0.1:{opts.port}", mode="per_device")
    started = time.monotonic()
    thread = threading.Thread(target=runner.run, name="fleet")
    thread.start()
    try:
        while runner.progress().online < len(fleet):
            if not thread.is_alive() or time.monotonic() - started > _CONNECT_TIMEOUT_S:
                raise RuntimeError(f"only {runner.progress().online} of {len(fleet)} connected")
            time.sleep(0.1)
        connect_s = time.monotonic() - started
        window = _Window(opts.broker_pid, lambda: runner.progress().acknowledged)
        time.sleep(opts.warmup)
        window.begin()
        time.sleep(opts.seconds)
        _report("silobreak", opts, connect_s, window.end())
    finally:
        runner.stop()
        thread.join()


def _child_aiomqtt(opts: argparse.Namespace) -> None:
    import uvloop  # noqa: PLC0415

    from silobreak.bench.aiomqtt_fleet import FleetCounters, run_fleet  # noqa: PLC0415

    ids = [d.device_id for d in _fleet(opts.devices, opts.interval).devices]

    async def main() -> None:
        counters, stop = FleetCounters(), asyncio.Event()
        fleet = asyncio.create_task(
            run_fleet(
                "127.0.0.1", opts.port, ids, interval=opts.interval, counters=counters, stop=stop
            )
        )
        try:
            await _measure_aiomqtt(opts, counters, len(ids))
        except BaseException:
            stop.set()
            await fleet
            raise
        # Measured: leave without cancelling 10,000 clients mid-publish, which makes aiomqtt
        # re-arm closed sockets on uvloop and print thousands of tracebacks; the broker and
        # every socket go with the process.
        os._exit(0)

    uvloop.run(main())


async def _measure_aiomqtt(opts: argparse.Namespace, counters: Any, devices: int) -> None:
    started = time.monotonic()
    while counters.connected < devices:
        if counters.failed or time.monotonic() - started > _CONNECT_TIMEOUT_S:
            raise RuntimeError(f"only {counters.connected} of {devices} connected")
        await asyncio.sleep(0.1)
    connect_s = time.monotonic() - started
    window = _Window(opts.broker_pid, lambda: int(counters.acknowledged))
    await asyncio.sleep(opts.warmup)
    window.begin()
    await asyncio.sleep(opts.seconds)
    _report("aiomqtt", opts, connect_s, window.end())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--broker-pid", type=int, required=True)
    opts = parser.parse_args(argv)
    raise_fd_limit(opts.devices + _SPARE_FDS)
    if opts.system == "silobreak":
        _child_silobreak(opts)
    else:
        _child_aiomqtt(opts)


if __name__ == "__main__":
    main()
