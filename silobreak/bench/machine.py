"""The machine a benchmark ran on, as one line for its report."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from silobreak.local import LocalServiceError, find_binary


@dataclass(frozen=True, slots=True)
class Machine:
    host: str
    cpu: str
    cores: int
    memory_gib: float
    kernel: str
    python: str
    postgres: str
    mosquitto: str

    def line(self) -> str:
        return (
            f"{self.host}: {self.cpu}, {self.cores} cores, {self.memory_gib:.0f} GiB, "
            f"Linux {self.kernel}; Python {self.python}, {self.postgres}, {self.mosquitto}"
        )


def machine() -> Machine:
    """Read the CPU, memory, kernel and server versions this process would benchmark with."""
    return Machine(
        host=platform.node(),
        cpu=_cpu_model(),
        cores=os.cpu_count() or 1,
        memory_gib=_memory_kib() / 2**20,
        kernel=platform.release(),
        python=platform.python_version(),
        postgres=_version("postgres", "--version") or "PostgreSQL (not found)",
        mosquitto=_version("mosquitto", "-h") or "Mosquitto (not found)",
    )


@cache
def describe_machine() -> str:
    """`machine().line()`, read once per process."""
    return machine().line()


def load_average() -> str:
    """The 1-minute load average: how busy the shared machine was."""
    return f"{os.getloadavg()[0]:.1f}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _version(program: str, flag: str) -> str | None:
    """The first line a server prints about its version: `postgres (PostgreSQL) 15.10`."""
    try:
        binary = find_binary(program)
        done = subprocess.run(
            [str(binary), flag], capture_output=True, text=True, timeout=10, check=False
        )
    except (LocalServiceError, OSError, subprocess.TimeoutExpired):
        return None
    for line in (done.stdout + done.stderr).splitlines():
        if "version" in line.lower() or "PostgreSQL" in line:
            named = line.replace("postgres (PostgreSQL)", "PostgreSQL")
            return " ".join(named.replace("mosquitto version", "Mosquitto").split())
    return None
