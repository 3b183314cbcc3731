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
both): :func:`run_in_subprocess` (and :func:`saturation`, by default) start ``python loadgen_engine.py`` with the spec
as JSON on stdin and read the result as JSON from stdout; ``python -m scoring.tools.loadgen`` is the same entry point.
The generator's process runs :mod:`scoring.tools.loadgen_engine` and :mod:`scoring.tools.loadgen_spec` only: stdlib
(uvloop optional), nothing from ``scoring``, so it carries neither the package's imports nor their start-up time.
This module (the parent's side: the subprocess, the saturation search) re-exports their public names.

How fast: on a 2-core machine, against a trivial server in another process, it kept a 40,000 requests/s schedule
(dispatch lag p99 1.3 ms, 60 % of a core); at 2,000/s it uses about 10-15 % of a core. Usage::

    from scoring.tools import loadgen

    reqs = [loadgen.Request.get(f"/v1/scores/{k}") for k in keys]
    spec = loadgen.LoadSpec("http://127.0.0.1:8000", reqs, rate_per_s=2000, duration_s=10)
    result = loadgen.run_in_subprocess(spec)
    result.latency_ms.p99, result.errors, result.client_bound
"""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scoring.errors import ScoringError
from scoring.tools import loadgen_engine
from scoring.tools.loadgen_engine import main, run, run_async
from scoring.tools.loadgen_spec import (
    ARRIVALS,
    BAD_RESPONSE,
    CLIENT_ERROR,
    CONNECT,
    DISCONNECTED,
    HTTP_PREFIX,
    ORDERS,
    TIMEOUT,
    LoadResult,
    LoadSpec,
    LoadSpecError,
    Percentiles,
    Request,
    schedule,
)

__all__ = [
    "ARRIVALS",
    "BAD_RESPONSE",
    "CLIENT_ERROR",
    "CONNECT",
    "DISCONNECTED",
    "HTTP_PREFIX",
    "ORDERS",
    "TIMEOUT",
    "LoadResult",
    "LoadSpec",
    "LoadSpecError",
    "LoadgenError",
    "Percentiles",
    "Request",
    "SaturationResult",
    "SaturationStep",
    "main",
    "run",
    "run_async",
    "run_in_subprocess",
    "saturation",
    "schedule",
    "verdict",
]

_LOGGER = logging.getLogger(__name__)


class LoadgenError(ScoringError, RuntimeError):
    """The load generator's own process failed (not the server under test): its stderr is in the message. A
    :class:`~scoring.errors.ScoringError`, and still a ``RuntimeError`` for callers that catch that."""


def run_in_subprocess(spec: LoadSpec, *, python: str | None = None, timeout_s: float | None = None) -> LoadResult:
    """Run `spec` in a new Python process (`python`, by default this one's interpreter): the spec goes in as JSON on
    stdin, the result comes back as JSON on stdout. The child runs :mod:`scoring.tools.loadgen_engine` as a script
    (``python -P loadgen_engine.py``), so it imports nothing from ``scoring``. Bounded: the schedule, the drain, the
    connects, plus 30 s to start."""
    limit = timeout_s or spec.duration_s + spec.drain_timeout_s + spec.connect_timeout_s + 30.0
    cmd = [python or sys.executable, "-P", str(Path(loadgen_engine.__file__).resolve())]
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


if __name__ == "__main__":
    sys.exit(main())
