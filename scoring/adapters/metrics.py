"""Prometheus metrics of a stream, on their own registry, served on a loopback port while the query runs."""

from __future__ import annotations

from collections.abc import Sequence

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
"""Seconds: from real-time mode's tens of milliseconds to a backlog being worked off."""


class StreamMetrics:
    """Counters, a batch-duration histogram and a per-row lag histogram for one query (label ``job``)."""

    def __init__(self, job: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._job = job
        labels = ["job"]
        self._rows_in = Counter("scoring_stream_rows_in", "Rows read from the source", labels, registry=self.registry)
        self._rows_out = Counter(
            "scoring_stream_rows_out", "Rows committed to the output", labels, registry=self.registry
        )
        self._quarantined = Counter(
            "scoring_stream_rows_quarantined", "Rows set aside in the quarantine table", labels, registry=self.registry
        )
        self._batches = Counter(
            "scoring_stream_batches",
            "Micro-batches processed, by outcome",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "scoring_stream_batch_duration_seconds",
            "Wall time of a micro-batch, from the start of its processing to its output commit",
            labels,
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._lag = Histogram(
            "scoring_stream_lag_seconds",
            "Per row: event time (or source commit time) to the output commit",
            labels,
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._version = Gauge(
            "scoring_stream_model_version", "Model version the query scores with now", labels, registry=self.registry
        )
        self._server = None
        self.port: int | None = None

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on `host`:`port` (0: a free port) until :meth:`close`; returns the port."""
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_address[1])
        return self.port

    def batch(
        self,
        *,
        outcome: str,
        rows_in: int,
        rows_out: int,
        rows_quarantined: int,
        duration_s: float,
        lags_s: Sequence[float],
        model_version: str,
    ) -> None:
        job = self._job
        self._batches.labels(job, outcome).inc()
        self._rows_in.labels(job).inc(rows_in)
        self._rows_out.labels(job).inc(rows_out)
        self._quarantined.labels(job).inc(rows_quarantined)
        self._duration.labels(job).observe(duration_s)
        histogram = self._lag.labels(job)
        for lag in lags_s:
            histogram.observe(lag)
        try:
            self._version.labels(job).set(float(model_version))
        except ValueError:
            pass

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
