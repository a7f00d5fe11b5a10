"""Ingest counters, exposed on a Prometheus endpoint."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics on host:port (a daemon thread); port 0 means not at all."""
        if port:
            start_http_server(port, addr=host, registry=self.registry)
