"""An open-loop HTTP/1.1 load generator: the client side of ``scoring serve``'s benchmarks.

Open loop: request *i* is due at a fixed time ``t0 + offset_i`` (a constant rate ``R`` for ``D`` seconds, or Poisson
arrivals at mean rate ``R``), whether or not earlier requests were answered. Each latency is measured **from the
request's scheduled send time** to the last byte of its response, so time a request spent waiting in the client
(every connection busy, the event loop late) or in the server's queue is part of its latency. A closed-loop client
(send, wait, send again) sends less when the server slows down and so hides exactly the latencies a benchmark is after
("coordinated omission", Gil Tene; wrk2 and Vegeta avoid it the same way). (The event loop's timers have a
resolution of 1 ms: a request may leave up to 0.5 ms before its time, and then its latency counts from when it left,
so that no latency reads shorter than it was.)

How: one asyncio event loop (uvloop when installed, else asyncio's own), a pool of ``connections`` raw keep-alive
HTTP/1.1 connections (:func:`asyncio.open_connection`), request bytes built once before the run, responses parsed by
status line and ``Content-Length`` (a chunked response is counted as ``bad_response`` with a message saying so).
When a request is due and every connection is busy, another connection is opened, up to ``max_connections``, and
counted (``connections_extra``); beyond that the request waits for a free one, and its latency still counts from its
scheduled time. The run is bounded: requests not answered ``drain_timeout_s`` after the schedule ends count as
``timeout``.

The client's own lateness is reported so that a client too slow to keep its schedule cannot pass for a slow server:
``dispatch_lag_ms`` is how late the scheduler released each request (the event loop's lateness, the client's alone);
``send_lag_ms`` is how late each request was written (also waiting for a free connection). When the dispatch lag's p99
exceeds ``client_lag_bound_ms``, or the client used 90 % of a core, the result says ``client_bound`` and why.

Run it in a process of its own, never in the server's (a server sharing the client's event loop, or its GIL, measures
both): :func:`run_in_subprocess` (and :func:`saturation`, by default) start ``python loadgen.py`` with the spec as
JSON on stdin and read the result as JSON from stdout; ``python -m scoring.tools.loadgen`` is the same entry point.
This module is stdlib only (uvloop optional) and imports nothing from ``scoring``, so its process carries neither the
package's imports nor their start-up time.

How fast: on a 2-core machine, against a trivial server in another process, it kept a 40,000 requests/s schedule
(dispatch lag p99 1.3 ms, 60 % of a core); at 2,000/s it uses about 10-15 % of a core. Usage::

    from scoring.tools import loadgen

    reqs = [loadgen.Request.get(f"/v1/scores/{k}") for k in keys]
    spec = loadgen.LoadSpec("http://127.0.0.1:8000", reqs, rate_per_s=2000, duration_s=10)
    result = loadgen.run_in_subprocess(spec)
    result.latency_ms.p99, result.errors, result.client_bound
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import math
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_LOGGER = logging.getLogger(__name__)

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

_CLIENT_CPU_BOUND = 0.9
"""A client that used this fraction of a core or more is near its limit: its timings include its own queueing."""
_MAX_HEAD_BYTES = 64 * 1024
_EARLY_S = 0.0005
"""A request this close to its time leaves now: half of uvloop's timer resolution (1 ms)."""


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
            raise ValueError("invalid load spec: " + "; ".join(problems))

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
            raise ValueError(f"invalid load spec: unknown keys {unknown} (known: {sorted(fields)})")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"invalid load spec: missing keys {missing}")
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


# ------------------------------------------------------------------------------------------------------ generator


class _BadResponse(Exception):
    pass


class _StaleConnection(Exception):
    """The server closed a reused keep-alive connection before a byte of the response: safe to send again, once."""


async def _read_response(reader: asyncio.StreamReader, head_only: bool) -> tuple[int, bool]:
    """Read one response; return its status and whether the connection stays open."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise _StaleConnection from e
        raise ConnectionResetError(f"connection closed inside a response head ({len(e.partial)} bytes read)") from e
    except asyncio.LimitOverrunError as e:
        raise _BadResponse(f"response head longer than {_MAX_HEAD_BYTES} bytes") from e
    line_end = head.find(b"\r\n")
    version, _, rest = head[:line_end].partition(b" ")
    if not version.startswith(b"HTTP/1."):
        raise _BadResponse(f"not an HTTP/1.x status line: {head[:line_end][:80]!r}")
    try:
        status = int(rest[:3])
    except ValueError as e:
        raise _BadResponse(f"bad status line: {head[:line_end][:80]!r}") from e
    if status < 200:
        raise _BadResponse(f"interim response {status} (1xx) is not supported")
    length = None
    keep_alive = version == b"HTTP/1.1"
    for line in head[line_end + 2 : -4].split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError as e:
                raise _BadResponse(f"bad Content-Length: {value[:40]!r}") from e
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            raise _BadResponse(
                "chunked transfer-encoding is not supported by scoring.tools.loadgen: the server must send Content-Length"
            )
        elif name == b"connection":
            value = value.strip().lower()
            keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
    if head_only or status in (204, 304):
        return status, keep_alive
    if length is None:
        raise _BadResponse(f"status {status} without Content-Length (a body read until close is not supported)")
    if length:
        await reader.readexactly(length)
    return status, keep_alive


class _Run:
    """One run's state: the schedule, the connections' workers and the counters they update."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.host, self.port = spec.host_port
        host_header = self.host if self.port == 80 else f"{self.host}:{self.port}"
        self.payloads = [r.encode(host_header) for r in spec.requests]
        self.head_only = [r.method == "HEAD" for r in spec.requests]
        self.offsets = schedule(spec)
        n = len(self.offsets)
        if spec.order == "cycle":
            self.picks = [i % len(self.payloads) for i in range(n)]
        else:
            rng = random.Random(spec.seed + 1)
            self.picks = [rng.randrange(len(self.payloads)) for _ in range(n)]
        self.ok_statuses = frozenset(spec.ok_statuses)
        self.t0 = 0.0
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.waiting = 0
        self.workers: list[asyncio.Task] = []
        self.open_now = 0
        self.peak = 0
        self.opened = 0
        self.extra = 0
        self.sent = 0
        self.completed = 0
        self.ok = 0
        self.accounted = 0
        self.statuses: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.samples: dict[str, str] = {}
        self.latencies: list[float] = []
        self.dispatch_lags: list[float] = []
        self.send_lags: list[float] = []
        self.last_done = 0.0
        self.all_done = asyncio.Event()
        self.scheduling = True

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, limit=_MAX_HEAD_BYTES), self.spec.connect_timeout_s
        )
        self.opened += 1
        return reader, writer

    def account(self, kind: str | None, message: str = "") -> None:
        if kind is not None:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            if kind not in self.samples:
                self.samples[kind] = message
                if kind == BAD_RESPONSE:
                    _LOGGER.warning("bad response from %s: %s", self.spec.url, message)
        self.accounted += 1
        if self.accounted == len(self.offsets):
            self.all_done.set()

    def start_worker(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        self.workers.append(asyncio.ensure_future(self.worker(conn)))

    async def worker(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        self.open_now += 1
        self.peak = max(self.peak, self.open_now)
        reader, writer = conn if conn else (None, None)
        try:
            while True:
                self.waiting += 1
                i = await self.queue.get()
                self.waiting -= 1
                due = self.t0 + self.offsets[i]
                payload = self.payloads[self.picks[i]]
                head_only = self.head_only[self.picks[i]]
                counted_send = False
                for attempt in (0, 1):
                    if writer is None or reader.at_eof() or writer.is_closing():
                        if writer is not None:
                            writer.close()
                        reader = writer = None
                        try:
                            reader, writer = await self.connect()
                        except (OSError, TimeoutError) as e:
                            self.account(CONNECT, f"{self.host}:{self.port}: {type(e).__name__}: {e}")
                            break
                    if not counted_send:
                        sent_at = time.perf_counter()
                        self.send_lags.append(sent_at - due)
                        start = min(due, sent_at)  # the scheduled time, unless the timer let it leave early
                        self.sent += 1
                        counted_send = True
                    try:
                        writer.write(payload)
                        status, keep_alive = await _read_response(reader, head_only)
                    except _StaleConnection:
                        writer.close()
                        reader = writer = None
                        if attempt == 0:
                            continue  # a reused connection the server had closed: send again on a new one
                        self.account(DISCONNECTED, "the server closed the connection without a response")
                        break
                    except _BadResponse as e:
                        writer.close()
                        reader = writer = None
                        self.account(BAD_RESPONSE, str(e))
                        break
                    except (OSError, asyncio.IncompleteReadError) as e:
                        writer.close()
                        reader = writer = None
                        self.account(DISCONNECTED, f"{type(e).__name__}: {e}")
                        break
                    except Exception as e:  # a bug here must not lose the request or the connection's worker
                        writer.close()
                        reader = writer = None
                        _LOGGER.exception("load generator error on a request to %s", self.spec.url)
                        self.account(CLIENT_ERROR, f"{type(e).__name__}: {e}")
                        break
                    now = time.perf_counter()
                    self.latencies.append(now - start)
                    self.last_done = now
                    self.completed += 1
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if 200 <= status < 300 or status in self.ok_statuses:
                        self.ok += 1
                        self.account(None)
                    else:
                        self.account(f"{HTTP_PREFIX}{status}", f"status {status}")
                    if not keep_alive:
                        writer.close()
                        reader = writer = None
                    break
        finally:
            self.open_now -= 1
            if writer is not None:
                writer.close()

    async def scheduler(self) -> None:
        perf = time.perf_counter
        released = 0
        for i, offset in enumerate(self.offsets):
            due = self.t0 + offset
            now = perf()
            # uvloop rounds a timer to the nearest millisecond, so it may fire up to 0.5 ms early, and sleeping again
            # for less than that would round to 0 and spin a core. A request within _EARLY_S of its time leaves now,
            # and its latency counts from when it left (see worker), so it never reads shorter than it was.
            while due - now > _EARLY_S:
                await asyncio.sleep(due - now)
                now = perf()
            released += 1
            if released % 64 == 0:
                await asyncio.sleep(0)  # a client running behind still lets its connections work
                now = perf()
            self.dispatch_lags.append(now - due)
            self.queue.put_nowait(i)
            if self.queue.qsize() > self.waiting and len(self.workers) < self.spec.max_connections:
                self.extra += 1
                self.start_worker(None)
        self.scheduling = False

    async def run(self) -> LoadResult:
        spec = self.spec
        opened = await asyncio.gather(*(self.connect() for _ in range(spec.connections)), return_exceptions=True)
        for conn in opened:
            if isinstance(conn, BaseException):
                _LOGGER.info("pre-opening a connection to %s failed: %s", spec.url, conn)
                self.start_worker(None)
            else:
                self.start_worker(conn)
        await asyncio.sleep(0)  # let the workers reach the queue before the first request is due
        cpu0 = time.process_time()
        self.t0 = time.perf_counter() + 0.005
        deadline = self.t0 + spec.duration_s + spec.drain_timeout_s
        scheduler = asyncio.ensure_future(self.scheduler())
        if not self.offsets:
            self.all_done.set()
        try:
            await asyncio.wait_for(self.all_done.wait(), max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            pass
        end = time.perf_counter()
        cpu = time.process_time() - cpu0
        scheduler.cancel()
        for task in self.workers:
            task.cancel()
        await asyncio.gather(scheduler, *self.workers, return_exceptions=True)
        unanswered = len(self.offsets) - self.accounted
        if unanswered:
            self.errors[TIMEOUT] = unanswered
            self.samples.setdefault(
                TIMEOUT, f"{unanswered} requests unanswered {spec.drain_timeout_s} s after the schedule ended"
            )
        return self.result(end, cpu)

    def result(self, end: float, cpu_s: float) -> LoadResult:
        spec = self.spec
        elapsed = max(spec.duration_s, (self.last_done or self.t0) - self.t0)
        dispatch = Percentiles.of_seconds(self.dispatch_lags)
        cpu_fraction = cpu_s / max(end - self.t0, 1e-9)
        reasons = []
        if dispatch.p99 is not None and dispatch.p99 > spec.client_lag_bound_ms:
            reasons.append(
                f"its scheduler released requests late: dispatch lag p99 {dispatch.p99:.1f} ms "
                f"> {spec.client_lag_bound_ms} ms"
            )
        if cpu_fraction >= _CLIENT_CPU_BOUND:
            reasons.append(f"it used {cpu_fraction:.0%} of a core")
        if self.scheduling:
            reasons.append("its schedule did not finish before the deadline")
        return LoadResult(
            url=spec.url,
            rate_per_s=spec.rate_per_s,
            duration_s=spec.duration_s,
            arrivals=spec.arrivals,
            scheduled=len(self.offsets),
            sent=self.sent,
            completed=self.completed,
            ok=self.ok,
            errors=dict(sorted(self.errors.items())),
            statuses={str(k): v for k, v in sorted(self.statuses.items())},
            error_samples=dict(sorted(self.samples.items())),
            elapsed_s=round(elapsed, 6),
            throughput_per_s=round(self.completed / elapsed, 3),
            latency_ms=Percentiles.of_seconds(self.latencies),
            dispatch_lag_ms=dispatch,
            send_lag_ms=Percentiles.of_seconds(self.send_lags),
            connections_opened=self.opened,
            connections_extra=self.extra,
            peak_connections=self.peak,
            client_cpu_fraction=round(cpu_fraction, 3),
            client_bound=bool(reasons),
            client_bound_reason="; ".join(reasons) or None,
            event_loop=_loop_name(),
        )


def _loop_name() -> str:
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


async def run_async(spec: LoadSpec) -> LoadResult:
    """Run `spec` on the running event loop. Prefer :func:`run_in_subprocess`: never share a loop with the server."""
    return await _Run(spec).run()


def run(spec: LoadSpec) -> LoadResult:
    """Run `spec` in this process, on a new event loop (uvloop when installed). The server must be elsewhere."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_async(spec))


class LoadgenError(RuntimeError):
    """The load generator's own process failed (not the server under test): its stderr is in the message."""


def run_in_subprocess(spec: LoadSpec, *, python: str | None = None, timeout_s: float | None = None) -> LoadResult:
    """Run `spec` in a new Python process (`python`, by default this one's interpreter): the spec goes in as JSON on
    stdin, the result comes back as JSON on stdout. The child runs this file as a script (``python -P loadgen.py``),
    so it imports nothing from ``scoring``. Bounded: the schedule, the drain, the connects, plus 30 s to start."""
    limit = timeout_s or spec.duration_s + spec.drain_timeout_s + spec.connect_timeout_s + 30.0
    cmd = [python or sys.executable, "-P", str(Path(__file__).resolve())]
    try:
        done = subprocess.run(cmd, input=spec.to_json(), capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired as e:
        raise LoadgenError(f"the load generator did not finish in {limit:.0f} s: {e.stderr!r}") from e
    if done.returncode != 0:
        raise LoadgenError(f"the load generator exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return LoadResult.from_json(done.stdout)


# ----------------------------------------------------------------------------------------------------- saturation


@dataclasses.dataclass(frozen=True)
class SaturationStep:
    rate_per_s: float
    held: bool
    reason: str | None
    """Why the step did not hold (``None`` when it held)."""
    result: LoadResult


@dataclasses.dataclass(frozen=True)
class SaturationResult:
    max_rate_held: float | None
    """The highest rate asked that held (``None``: not even the first)."""
    stopped_because: str
    client_bound: bool
    """The search stopped because the client fell behind, not the server: the server's limit is above what it found."""
    steps: tuple[SaturationStep, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verdict(result: LoadResult, *, p99_bound_ms: float, min_completed_fraction: float = 0.99) -> str | None:
    """Why a step did not hold, or ``None`` when it held: p99 within bound, nearly all completed, no errors."""
    if result.client_bound:
        return f"client bound: {result.client_bound_reason}"
    if result.error_count:
        return f"errors: {result.errors}"
    if result.completed_fraction < min_completed_fraction:
        return f"completed {result.completed}/{result.scheduled} < {min_completed_fraction:.0%}"
    if result.latency_ms.p99 is None or result.latency_ms.p99 > p99_bound_ms:
        return f"p99 {result.latency_ms.p99} ms > {p99_bound_ms} ms"
    return None


def saturation(
    spec: LoadSpec,
    start_rate_per_s: float,
    *,
    p99_bound_ms: float = 100.0,
    factor: float = 1.5,
    step_s: float = 3.0,
    min_completed_fraction: float = 0.99,
    max_rate_per_s: float | None = None,
    max_steps: int = 15,
    refine_steps: int = 2,
    pause_s: float = 1.0,
    in_subprocess: bool = True,
) -> SaturationResult:
    """Step the rate up from `start_rate_per_s` by `factor` (each step `step_s` long, `pause_s` apart so the server
    drains) until a step does not hold (see :func:`verdict`), then bisect (geometrically) `refine_steps` times between
    the last rate that held and the first that did not. Reports the highest rate that held. Each step runs in a
    process of its own unless `in_subprocess` is false (only when the server is in another process already)."""
    go = run_in_subprocess if in_subprocess else run
    steps: list[SaturationStep] = []

    def attempt(rate: float) -> SaturationStep:
        result = go(dataclasses.replace(spec, rate_per_s=rate, duration_s=step_s))
        reason = verdict(result, p99_bound_ms=p99_bound_ms, min_completed_fraction=min_completed_fraction)
        step = SaturationStep(rate, reason is None, reason, result)
        steps.append(step)
        _LOGGER.info(
            "saturation: %.0f/s %s (p99 %s ms, errors %s)",
            rate,
            "held" if step.held else f"did not hold: {reason}",
            result.latency_ms.p99,
            result.errors,
        )
        time.sleep(pause_s)
        return step

    held: float | None = None
    failed: SaturationStep | None = None
    rate = start_rate_per_s
    for _ in range(max_steps):
        step = attempt(rate)
        if not step.held:
            failed = step
            break
        held = rate
        if max_rate_per_s is not None and rate >= max_rate_per_s:
            break
        rate = rate * factor if max_rate_per_s is None else min(rate * factor, max_rate_per_s)
    if failed is None:
        return SaturationResult(held, f"every step held, up to {held:.0f}/s", False, tuple(steps))
    if held is not None and not failed.result.client_bound:
        low, high = held, failed.rate_per_s
        for _ in range(refine_steps):
            mid = math.sqrt(low * high)
            step = attempt(mid)
            if step.held:
                low = held = mid
            else:
                high, failed = mid, step
                if step.result.client_bound:
                    break
    return SaturationResult(
        held,
        f"{failed.rate_per_s:.0f}/s did not hold: {failed.reason}",
        failed.result.client_bound,
        tuple(steps),
    )


# ---------------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scoring.tools.loadgen``: a :class:`LoadSpec` as JSON on stdin, its :class:`LoadResult` as JSON on stdout.
    Exit 2 when the spec is invalid."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        sys.stderr.write(__doc__.split("\n\n")[0] + "\nusage: python -m scoring.tools.loadgen < spec.json > result.json\n")
        return 0 if argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        spec = LoadSpec.from_json(sys.stdin.read())
    except (ValueError, KeyError, TypeError) as e:
        sys.stderr.write(f"scoring.tools.loadgen: {e}\n")
        return 2
    sys.stdout.write(run(spec).to_json() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
