"""The load generator's open-loop engine (see :mod:`scoring.tools.loadgen` for what it does and how to use it): one
asyncio event loop, a pool of raw keep-alive HTTP/1.1 connections, the counters; and the entry point of its own
process. Stdlib only (uvloop optional), and it imports nothing from ``scoring``: :func:`scoring.tools.loadgen.run_in_subprocess`
runs this file as a script (``python -P loadgen_engine.py``), so its process carries neither the package's imports
nor their start-up time; ``python -m scoring.tools.loadgen`` is the same entry point."""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__:
    from scoring.tools.loadgen_spec import (
        BAD_RESPONSE,
        CLIENT_ERROR,
        CONNECT,
        DISCONNECTED,
        HTTP_PREFIX,
        TIMEOUT,
        LoadResult,
        LoadSpec,
        Percentiles,
        schedule,
    )
else:  # run as a file (``python -P loadgen_engine.py``): its sibling by path, without importing ``scoring``
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loadgen_spec import (  # type: ignore[no-redef]
        BAD_RESPONSE,
        CLIENT_ERROR,
        CONNECT,
        DISCONNECTED,
        HTTP_PREFIX,
        TIMEOUT,
        LoadResult,
        LoadSpec,
        Percentiles,
        schedule,
    )

_LOGGER = logging.getLogger(__name__)

_USAGE_TITLE = "An open-loop HTTP/1.1 load generator: the client side of ``scoring serve``'s benchmarks."

_CLIENT_CPU_BOUND = 0.9
"""A client that used this fraction of a core or more is near its limit: its timings include its own queueing."""
_MAX_HEAD_BYTES = 64 * 1024
_EARLY_S = 0.0005
"""A request this close to its time leaves now: half of uvloop's timer resolution (1 ms)."""


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


# ---------------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scoring.tools.loadgen``: a :class:`LoadSpec` as JSON on stdin, its :class:`LoadResult` as JSON on stdout.
    Exit 2 when the spec is invalid."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        sys.stderr.write(_USAGE_TITLE + "\nusage: python -m scoring.tools.loadgen < spec.json > result.json\n")
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
