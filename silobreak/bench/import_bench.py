"""`silobreak bench import`: a bulk registry import with credentials, applied to a live broker."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

from silobreak.broker_config import BrokerConfig, render, write
from silobreak.local import LocalMosquitto, LocalPostgres, free_port
from store.migrate import migrate

_TEMPLATE: Final = "bench_template"


@dataclass(frozen=True, slots=True)
class ImportReport:
    devices: int
    seconds: list[float]  # wall time of `silobreak devices import`, one per run

    def markdown(self) -> str:
        runs = ", ".join(f"{s:.2f}" for s in self.seconds)
        return (
            f"| bulk import with credentials | {self.devices:,} devices | "
            f"median {statistics.median(self.seconds):.2f} s (runs: {runs}) |"
        )


class _Broker(LocalMosquitto):
    def __init__(self, cfg: BrokerConfig) -> None:
        super().__init__(cfg.directory, port=cfg.plain_port)
        self._cfg = cfg

    def config_text(self) -> str:
        return render(self._cfg)


def run_import_bench(*, devices: int, runs: int, log: Callable[[str], None]) -> ImportReport:
    """Import `devices` new devices from CSV `runs` times, each into a fresh database, with a
    running Mosquitto (generated config) reloaded at the end of each import."""
    with tempfile.TemporaryDirectory(prefix="silobreak-bench-import-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # PostgreSQL runs as `postgres` when we are root
        fleet = root / "fleet.csv"
        fleet.write_text(_fleet_csv(devices), encoding="utf-8")
        cfg = BrokerConfig(
            profile="dev",
            directory=root / "mqtt",
            plain_port=free_port(),
            run_as="root" if os.geteuid() == 0 else None,
        )
        write(cfg, cfg.directory / "mosquitto.conf")
        with LocalPostgres(root / "pg") as pg, _Broker(cfg):
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(_TEMPLATE)))
            migrate(pg.url_for(_TEMPLATE))
            seconds = []
            for run in range(runs):
                name = f"bench_import_{run}"
                with psycopg.connect(pg.url, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(name), sql.Identifier(_TEMPLATE)
                        )
                    )
                took = _time_import(pg.url_for(name), cfg.directory, fleet, root / f"s{run}.csv")
                log(f"run {run + 1}: {devices} devices in {took:.2f} s")
                seconds.append(took)
    return ImportReport(devices, seconds)


def _time_import(db_url: str, broker_dir: Path, fleet: Path, secrets: Path) -> float:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SILOBREAK_")},
        "SILOBREAK_DATABASE_URL": db_url,
        "SILOBREAK_BROKER_DIR": str(broker_dir),
    }
    argv = [sys.executable, "-m", "silobreak", "devices", "import", str(fleet)]
    started = time.perf_counter()
    result = subprocess.run(
        [*argv, "--secrets-out", str(secrets)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - started
    if result.returncode != 0 or "broker reloaded" not in result.stderr:
        raise RuntimeError(f"import failed: {result.stderr.strip()}")
    return took


def _fleet_csv(devices: int) -> str:
    types = ("streetlight", "air_sensor", "traffic_light", "meter")
    services = {"streetlight": "lighting", "air_sensor": "environment",
                "traffic_light": "mobility", "meter": "energy"}  # fmt: skip
    lines = ["device_id,device_type,service,district,lat,lon"]
    for i in range(devices):
        t = types[i % 4]
        lat, lon = 45.15 + (i % 100) / 1000, 5.70 + (i // 100 % 100) / 1000
        lines.append(f"bench-{i:06d},{t},{services[t]},d{i % 12},{lat:.4f},{lon:.4f}")
    return "\n".join(lines) + "\n"
