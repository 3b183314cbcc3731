"""Prometheus metrics on their own registries: a stream's (served on a loopback port while the query runs) and
the online service's (on its own /metrics route)."""

from __future__ import annotations

from collections.abc import Sequence

from scoring.errors import require_extra

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
"""Seconds: from real-time mode's tens of milliseconds to a backlog being worked off."""


class StreamMetrics:
    """Counters, a batch-duration histogram and a per-row lag histogram for one query (label ``job``)."""

    def __init__(self, job: str) -> None:
        require_extra("stream", "stream.metrics_port")
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


LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds: from an in-memory hit (well under a millisecond) to a live call at its deadline."""


class ServeMetrics:
    """What ``scoring serve`` exposes on ``/metrics`` (label ``job``): request latency by route and source, lookups
    by outcome (hit / live / stale / miss), live errors by kind, breaker events, in-flight requests, and the index's
    table version, size and age, and the model version served."""

    def __init__(self, job: str) -> None:
        require_extra("serve", "scoring serve")
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self._job = job
        labels = ["job"]
        self._latency = Histogram(
            "scoring_serve_request_duration_seconds",
            "Request latency by route and by where the answer came from",
            [*labels, "route", "source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._lookups = Counter(
            "scoring_serve_lookups",
            "Keys answered, by outcome (hit, live, stale, miss)",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._live_errors = Counter(
            "scoring_serve_live_errors",
            "Live requests not answered, by kind",
            [*labels, "kind"],
            registry=self.registry,
        )
        self._events = Counter(
            "scoring_serve_live_events",
            "Live backend events (breaker_opened, breaker_closed, backend_error, ...)",
            [*labels, "event", "backend"],
            registry=self.registry,
        )
        self._inflight = Gauge("scoring_serve_in_flight", "Requests being answered", labels, registry=self.registry)
        self._index_version = Gauge(
            "scoring_serve_index_table_version",
            "Table version the precomputed index holds",
            labels,
            registry=self.registry,
        )
        self._index_keys = Gauge(
            "scoring_serve_index_keys", "Keys in the precomputed index", labels, registry=self.registry
        )
        self._index_built = Gauge(
            "scoring_serve_index_built_timestamp_seconds",
            "When the index served now was loaded (its age: now - this)",
            labels,
            registry=self.registry,
        )
        self._version = Gauge(
            "scoring_serve_model_version",
            "Model version the alias points to (live inference uses it)",
            labels,
            registry=self.registry,
        )

    def request(self, route: str, source: str, seconds: float) -> None:
        self._latency.labels(self._job, route, source).observe(seconds)

    def lookup(self, outcome: str, count: int = 1) -> None:
        self._lookups.labels(self._job, outcome).inc(count)

    def live_error(self, kind: str) -> None:
        self._live_errors.labels(self._job, kind).inc()

    def live_event(self, event: str, backend: str) -> None:
        self._events.labels(self._job, event, backend).inc()

    def in_flight(self, delta: int) -> None:
        self._inflight.labels(self._job).inc(delta)

    def index(self, *, version: int | None, keys: int, built_at: float) -> None:
        self._index_version.labels(self._job).set(-1 if version is None else version)
        self._index_keys.labels(self._job).set(keys)
        self._index_built.labels(self._job).set(built_at)

    def model_version(self, version: str) -> None:
        try:
            self._version.labels(self._job).set(float(version))
        except ValueError:
            pass

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
