"""Ingest counters on a Prometheus endpoint (/metrics), with a health check (/healthz)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ingest.decode import REASONS


class IngestMetrics:
    """What an ingestor has received, stored and rejected; updated once per batch."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "silobreak_ingest_received", "Telemetry messages received", registry=r
        )
        self.stored = Counter("silobreak_ingest_stored", "Messages stored", registry=r)
        self.rows = Counter(
            "silobreak_ingest_rows", "Rows written (one per message and time)", registry=r
        )
        self.duplicates = Counter(
            "silobreak_ingest_duplicates", "Rows already stored (redeliveries)", registry=r
        )
        self.rejected = Counter(
            "silobreak_ingest_rejected", "Messages dead-lettered", ["reason"], registry=r
        )
        for reason in REASONS:
            self.rejected.labels(reason)
        self.refused_batches = Counter(
            "silobreak_ingest_refused_batches",
            "Batches the store refused for good, split to dead-letter what it refused",
            registry=r,
        )
        self.refused_probes = Counter(
            "silobreak_ingest_refused_probes",
            "Parts of refused batches written to find the messages the store refused",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "silobreak_ingest_batch_seconds",
            "Time to commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.pending = Gauge(
            "silobreak_ingest_pending", "Messages received and not yet acknowledged", registry=r
        )
        self.store_up = Gauge(
            "silobreak_ingest_store_up", "1 when the last commit worked", registry=r
        )

    def serve(
        self, host: str, port: int, health: Callable[[], tuple[bool, str]] | None = None
    ) -> None:
        """Serve /metrics and /healthz on host:port from a daemon thread; port 0: not at all.

        `health` answers (healthy, why); /healthz is 200 or 503 with the why as its body.
        """
        if not port:
            return
        registry = self.registry
        check = health or (lambda: (True, "ok"))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/healthz":
                    ok, why = check()
                    self._send(200 if ok else 503, why.encode() + b"\n", "text/plain")
                elif self.path.split("?")[0] == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # scrapes every few seconds would drown the ingestor's own log

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
