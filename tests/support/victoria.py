"""A throwaway victoria-metrics for the InfluxDB mirror's tests: InfluxDB 2's write API, read back.

Debian's victoria-metrics implements `/api/v2/write` (what influxdb-client calls) and exports
what it stored through `/api/v1/export`. A measurement `m` with field `f` becomes the series
`m_f`; tags become labels. It ignores the bucket. Deduplication is on (1 ms), so a point
written twice is stored once, as InfluxDB overwrites it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from silobreak.local import free_port

__all__ = ["LocalVictoria", "VictoriaUnavailable"]

# It starts in well under a second here; a loaded CI machine can be much slower.
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05


class VictoriaUnavailable(RuntimeError):
    """victoria-metrics is not installed or did not start."""


class LocalVictoria:
    """`victoria-metrics` on 127.0.0.1:`port`, its data in `data_dir`; restartable in place."""

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        binary = shutil.which("victoria-metrics")
        if binary is None:
            raise VictoriaUnavailable(
                "victoria-metrics not found: apt-get install -y victoria-metrics"
            )
        self._binary = binary
        self.data_dir = data_dir
        self.port = port if port is not None else free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "victoria.log").open("ab")
        self._process = subprocess.Popen(
            [
                self._binary,
                f"-storageDataPath={self.data_dir / 'data'}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                # Readings of any age are kept (the default drops those older than a month).
                "-retentionPeriod=100y",
                "-dedup.minScrapeInterval=1ms",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise VictoriaUnavailable(f"victoria-metrics did not start on port {self.port}")
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def export(self, match: str = '{__name__=~".+"}') -> list[dict[str, Any]]:
        """Every stored series matching `match`: {"metric": labels, "values", "timestamps"}."""
        self._get("/internal/force_flush")
        query = urllib.parse.urlencode({"match[]": match})
        body = self._get(f"/api/v1/export?{query}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def _healthy(self) -> bool:
        try:
            return self._get("/health").strip() == "OK"
        except (urllib.error.URLError, OSError):
            return False

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return str(response.read().decode())

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
