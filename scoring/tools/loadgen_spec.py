"""The load generator's spec and result: what to send, where and when (:class:`LoadSpec`, :class:`Request`,
:func:`schedule`), and what came back (:class:`LoadResult`, :class:`Percentiles`), both as JSON for the generator's
own process. Stdlib only when :mod:`scoring.tools.loadgen_engine` runs as a file and imports it (then
:class:`LoadSpecError` is a plain ``ValueError``)."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

if __package__:  # imported as part of ``scoring`` (whose package is loaded already): the one error hierarchy
    from scoring.errors import ConfigError

    _SPEC_ERROR_BASES: tuple[type[Exception], ...] = (ConfigError, ValueError)
else:  # in the generator's own process, run as a file: stdlib only
    _SPEC_ERROR_BASES = (ValueError,)


class LoadSpecError(*_SPEC_ERROR_BASES):
    """A load spec that cannot run (a bad value, an unknown or missing key). Imported as part of ``scoring`` it is a
    :class:`~scoring.errors.ConfigError`; it is a ``ValueError`` everywhere, for callers that catch that."""


ARRIVALS = ("constant", "poisson")
ORDERS = ("cycle", "random")

CONNECT = "connect"
"""Error kind: the connection could not be opened (refused, unreachable, ``connect_timeout_s`` passed)."""
TIMEOUT = "timeout"
"""Error kind: no complete response ``drain_timeout_s`` after the schedule ended (sent or still waiting to be sent)."""
BAD_RESPONSE = "bad_response"
"""Error kind: the response was not one this client reads (not HTTP/1.x, chunked, no Content-Length, malformed)."""
DISCONNECTED = "disconnected"
"""Error kind: the server closed the connection (or reset it) before the response was complete."""
CLIENT_ERROR = "client_error"
"""Error kind: the load generator itself failed on a request (a bug in this module; its log has the traceback)."""
HTTP_PREFIX = "http_"
"""Error kind prefix for a response whose status is not a success: ``http_503``."""


# ---------------------------------------------------------------------------------------------------------- spec


@dataclasses.dataclass(frozen=True)
class Request:
    """One prebuilt HTTP request: the caller's list of these is the request mix (cycled or sampled)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers; ``Host`` and ``Content-Length`` are added unless given here."""
    body: bytes = b""

    @classmethod
    def get(cls, path: str, headers: Sequence[tuple[str, str]] = ()) -> Request:
        return cls("GET", path, tuple(headers))

    @classmethod
    def post_json(cls, path: str, payload: Any, headers: Sequence[tuple[str, str]] = ()) -> Request:
        """A POST of `payload` encoded as JSON (compact), with ``Content-Type: application/json``."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls("POST", path, (("Content-Type", "application/json"), *headers), body)

    def encode(self, host: str) -> bytes:
        """The request's bytes on the wire, for a server at `host` (the ``Host`` header's value)."""
        names = {name.lower() for name, _ in self.headers}
        lines = [f"{self.method} {self.path} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"Host: {host}")
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        if "content-length" not in names and (self.body or self.method in ("POST", "PUT", "PATCH")):
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "path": self.path, "headers": [list(h) for h in self.headers]}
        try:
            out["body"] = self.body.decode()
        except UnicodeDecodeError:
            out["body_b64"] = base64.b64encode(self.body).decode()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        """The inverse of :meth:`to_dict`; a hand-written spec may give ``body`` as text or ``body_b64``."""
        if "body_b64" in data:
            body = base64.b64decode(data["body_b64"])
        else:
            body = data.get("body", "").encode()
        headers = tuple((str(name), str(value)) for name, value in data.get("headers", ()))
        return cls(data["method"], data["path"], headers, body)


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """What to send, where and when. Serialises to JSON (:meth:`to_json`) for the generator's own process."""

    url: str
    """The server's base URL, ``http://host:port`` (plain HTTP only); request paths are absolute."""
    requests: tuple[Request, ...]
    """The request mix, used in `order`: a list of every key the benchmark should touch, each a prebuilt request."""
    rate_per_s: float
    """Requests per second asked for: the schedule's rate (its mean rate with Poisson arrivals)."""
    duration_s: float
    """How long the schedule lasts; it holds ``round(rate_per_s * duration_s)`` requests with constant arrivals."""
    arrivals: str = "constant"
    """``constant``: evenly spaced; ``poisson``: exponential gaps (seeded by `seed`), bursts included."""
    order: str = "cycle"
    """``cycle``: requests[0], requests[1], ..., around again; ``random``: sampled uniformly (seeded by `seed`)."""
    seed: int = 0
    connections: int = 16
    """Keep-alive connections opened before the schedule starts."""
    max_connections: int = 256
    """More connections are opened when a request is due and all are busy, up to this many."""
    connect_timeout_s: float = 2.0
    drain_timeout_s: float = 5.0
    """After the schedule ends, how long to wait for the last responses; what is still unanswered is a ``timeout``."""
    ok_statuses: tuple[int, ...] = ()
    """Statuses that count as success besides 2xx (e.g. 404 when the mix asks for absent keys on purpose)."""
    client_lag_bound_ms: float = 5.0
    """The client is declared the bottleneck when its dispatch lag's p99 exceeds this."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests", tuple(self.requests))
        object.__setattr__(self, "ok_statuses", tuple(self.ok_statuses))
        problems = []
        if urlsplit(self.url).scheme != "http" or not urlsplit(self.url).hostname:
            problems.append(f"url must be http://host[:port], got {self.url!r} (no TLS)")
        if not self.requests:
            problems.append("requests is empty: give at least one Request")
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            problems.append(f"rate_per_s must be > 0, got {self.rate_per_s}")
        if not (self.duration_s > 0 and math.isfinite(self.duration_s)):
            problems.append(f"duration_s must be > 0, got {self.duration_s}")
        if self.arrivals not in ARRIVALS:
            problems.append(f"arrivals must be one of {ARRIVALS}, got {self.arrivals!r}")
        if self.order not in ORDERS:
            problems.append(f"order must be one of {ORDERS}, got {self.order!r}")
        if not 1 <= self.connections <= self.max_connections:
            problems.append(
                f"need 1 <= connections <= max_connections, got {self.connections} and {self.max_connections}"
            )
        if self.connect_timeout_s <= 0 or self.drain_timeout_s < 0:
            problems.append("connect_timeout_s must be > 0 and drain_timeout_s >= 0")
        if problems:
            raise LoadSpecError("invalid load spec: " + "; ".join(problems))

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "", parts.port or 80

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["requests"] = [r.to_dict() for r in self.requests]
        out["ok_statuses"] = list(self.ok_statuses)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise LoadSpecError(f"invalid load spec: unknown keys {unknown} (known: {sorted(fields)})")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise LoadSpecError(f"invalid load spec: missing keys {missing}")
        values = dict(data)
        values["requests"] = tuple(Request.from_dict(r) for r in data.get("requests", ()))
        values["ok_statuses"] = tuple(data.get("ok_statuses", ()))
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> LoadSpec:
        return cls.from_dict(json.loads(text))


def schedule(spec: LoadSpec) -> list[float]:
    """Each request's due time, in seconds from the start: evenly spaced, or Poisson arrivals seeded by `spec.seed`."""
    if spec.arrivals == "constant":
        n = round(spec.rate_per_s * spec.duration_s)
        return [i / spec.rate_per_s for i in range(n)]
    rng = random.Random(spec.seed)
    offsets = []
    t = rng.expovariate(spec.rate_per_s)
    while t < spec.duration_s:
        offsets.append(t)
        t += rng.expovariate(spec.rate_per_s)
    return offsets


# -------------------------------------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class Percentiles:
    """Milliseconds; all ``None`` when there was nothing to measure."""

    min: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    p999: float | None = None
    max: float | None = None
    mean: float | None = None

    @classmethod
    def of_seconds(cls, values: list[float]) -> Percentiles:
        """Nearest-rank percentiles of `values` (seconds), in milliseconds."""
        if not values:
            return cls()
        ordered = sorted(values)

        def rank(q: float) -> float:
            return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1e3, 3)

        return cls(
            round(ordered[0] * 1e3, 3),
            rank(0.50),
            rank(0.95),
            rank(0.99),
            rank(0.999),
            round(ordered[-1] * 1e3, 3),
            round(sum(ordered) / len(ordered) * 1e3, 3),
        )


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """One run's record: what was asked, what happened, and whether the client kept its schedule."""

    url: str
    rate_per_s: float
    """The rate asked for."""
    duration_s: float
    arrivals: str
    scheduled: int
    """Requests in the schedule."""
    sent: int
    """Requests written to a connection (a request re-sent once on a stale keep-alive connection counts once)."""
    completed: int
    """Complete responses received, whatever their status."""
    ok: int
    """Completed with a 2xx status or one of the spec's `ok_statuses`."""
    errors: dict[str, int]
    """Failed requests by kind: ``http_<status>``, ``connect``, ``timeout``, ``bad_response``, ``disconnected``,
    ``client_error``."""
    statuses: dict[str, int]
    """Every status received, by code."""
    error_samples: dict[str, str]
    """The first error message of each kind, e.g. why a response was a ``bad_response``."""
    elapsed_s: float
    """From the schedule's start to the last response (at least `duration_s`)."""
    throughput_per_s: float
    """Completed responses per second of `elapsed_s`."""
    latency_ms: Percentiles
    """From each request's scheduled send time (or when it left, if up to 0.5 ms earlier) to the last byte of its
    response, over completed responses, error statuses included (check `errors`); timeouts are not in it (they are
    in ``errors['timeout']``)."""
    dispatch_lag_ms: Percentiles
    """How late the client's scheduler released each request: the client's own lateness (negative: up to 0.5 ms
    early, the timer's rounding)."""
    send_lag_ms: Percentiles
    """How late each request was written: the dispatch lag plus waiting for a free connection."""
    connections_opened: int
    """Every connection opened, reconnections included."""
    connections_extra: int
    """Connections opened beyond the pool because a request was due and all were busy."""
    peak_connections: int
    client_cpu_fraction: float
    """CPU time of the client's process over the run's wall time: 1.0 is one core busy all along."""
    client_bound: bool
    """The client, not the server, limited this run: its numbers say more about the client than the server."""
    client_bound_reason: str | None
    event_loop: str
    """``uvloop`` or ``asyncio``."""

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def completed_fraction(self) -> float:
        return self.completed / self.scheduled if self.scheduled else 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadResult:
        values = dict(data)
        for name in ("latency_ms", "dispatch_lag_ms", "send_lag_ms"):
            values[name] = Percentiles(**data[name])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls.from_dict(json.loads(text))
