"""`scoring bench-serve`'s runs: each scenario's request mix, one timed run through the load generator (with the CPU
the service, Triton and every other process used meanwhile), the summaries, the saturation search, and the
precomputed index's memory (:mod:`scoring.tools.bench_serve` has the whole story)."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoring.errors import ScoringError
from scoring.tools import loadgen
from scoring.tools.bench_serve_scenarios import IDLE_THRESHOLD, KEY, LIVE_KEY_BASE, PERCENTILES, Scenario
from scoring.tools.bench_serve_service import _child_env, _children_cpu_s, _group_cpu_s, _machine_busy_s, _Service

_LOGGER = logging.getLogger(__name__)

# -- request mixes ----------------------------------------------------------------------------------------------------


def requests_for(scenario: Scenario, keys: np.ndarray, features: Sequence[str], seed: int = 0) -> list[loadgen.Request]:
    """The request mix of `scenario` (the load generator samples it at random): existing `keys` for the precomputed
    scenarios, new keys with random features for the live ones."""
    rng = np.random.default_rng(seed)
    if scenario.base == "precomputed":
        picked = rng.choice(keys, size=min(len(keys), 20_000), replace=False)
        return [loadgen.Request.get(f"/v1/scores/{int(k)}") for k in picked]
    if scenario.base == "precomputed-features":
        picked = rng.choice(keys, size=min(len(keys), 2_000), replace=False)
        values = np.round(rng.standard_normal((len(picked), len(features))), 5)
        return [
            loadgen.Request.post_json(
                "/v1/score", {"key": int(k), "features": dict(zip(features, map(float, row), strict=True))}
            )
            for k, row in zip(picked, values, strict=True)
        ]
    if scenario.base == "batch-100":
        count = 500
        picked = rng.choice(keys, size=(count, scenario.keys_per_request), replace=True)
        return [loadgen.Request.post_json("/v1/score", [{"key": int(k)} for k in row]) for row in picked]
    values = np.round(rng.standard_normal((2_000, len(features))), 5)
    return [
        loadgen.Request.post_json(
            "/v1/score",
            {"key": LIVE_KEY_BASE + i, "features": dict(zip(features, map(float, row), strict=True))},
        )
        for i, row in enumerate(values)
    ]


# -- runs ------------------------------------------------------------------------------------------------------------


def _spec(url: str, requests: Sequence[loadgen.Request], rate: float, duration_s: float, seed: int) -> loadgen.LoadSpec:
    return loadgen.LoadSpec(
        url, tuple(requests), rate_per_s=rate, duration_s=duration_s, order="random", seed=seed, drain_timeout_s=5.0
    )


class _Budget:
    """Seconds the bench may spend, in all, waiting for a quiet machine and measuring runs again that were disturbed."""

    def __init__(self, seconds: float) -> None:
        self.total = max(0.0, seconds)
        self.spent = 0.0

    def left(self) -> float:
        return max(0.0, self.total - self.spent)

    def spend(self, seconds: float) -> None:
        self.spent += seconds


class _OthersMeter:
    """What processes other than the bench's used of the cores over a window: the machine's busy core-seconds
    (/proc/stat) less the services' and Triton's (`ours()`), this process's and its waited-for children's."""

    def __init__(self, ours) -> None:
        self.ours = ours
        self.start = self._now()

    def _now(self) -> tuple[float | None, float, float, float]:
        return _machine_busy_s(), self.ours(), time.process_time() + _children_cpu_s(), time.monotonic()

    def cores(self) -> float | None:
        """Cores' worth the others used since the meter started (None where /proc/stat cannot be read)."""
        busy0, ours0, own0, wall0 = self.start
        busy1, ours1, own1, wall1 = self._now()
        if busy0 is None or busy1 is None:
            return None
        return round(max(0.0, (busy1 - busy0 - (ours1 - ours0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)), 3)


def wait_idle(ours, limit_s: float, *, threshold: float = IDLE_THRESHOLD, sample_s: float = 0.5) -> dict[str, Any]:
    """Wait, up to `limit_s`, until the processes that are not ours (`ours()`: CPU seconds of the services and Triton;
    this process and its children are counted as ours too) use less than `threshold` of a core over `sample_s`: on a
    machine shared with other work, a run starts when it is quiet. Returns how long it waited and what others used."""
    started = time.monotonic()
    while True:
        meter = _OthersMeter(ours)
        time.sleep(sample_s)
        others = meter.cores()
        waited = time.monotonic() - started
        if others is None or others < threshold or waited >= limit_s:
            return {"waited_s": round(waited, 1), "others_before": others}


def _run_one(
    spec: loadgen.LoadSpec, service: _Service, triton_pgid: int | None, scenario: Scenario, repetition: int
) -> dict[str, Any]:
    """One fixed-rate run in the load generator's process, with the CPU the service (and Triton) used meanwhile."""
    load_1m = os.getloadavg()[0]
    busy0 = _machine_busy_s()
    cpu0, loop0 = service.cpu_s()
    triton0 = _group_cpu_s(triton_pgid) if triton_pgid is not None else None
    clock, own0, children0 = time.monotonic(), time.process_time(), _children_cpu_s()
    result = loadgen.run_in_subprocess(spec)
    wall = time.monotonic() - clock
    mine = time.process_time() - own0 + _children_cpu_s() - children0  # this process and the load generator's
    cpu1, loop1 = service.cpu_s()
    triton1 = _group_cpu_s(triton_pgid) if triton_pgid is not None else None
    busy1 = _machine_busy_s()
    window = max(result.elapsed_s, 1e-9)
    latency = result.latency_ms
    server = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / window
    triton = None if triton0 is None or triton1 is None else (triton1 - triton0) / window
    other = None
    if busy0 is not None and busy1 is not None and server is not None:
        # the machine's busy core-seconds over the whole call, less what the service, Triton, the load generator (its
        # start-up included) and this process used: what other processes took from the cores meanwhile
        other = (busy1 - busy0 - (cpu1 - cpu0) - ((triton1 - triton0) if triton is not None else 0.0) - mine) / wall
    return {
        "scenario": scenario.name,
        "rate": spec.rate_per_s,
        "repetition": repetition,
        "duration_s": spec.duration_s,
        "scheduled": result.scheduled,
        "sent": result.sent,
        "completed": result.completed,
        "ok": result.ok,
        "errors": result.errors,
        "error_samples": result.error_samples,
        "throughput_per_s": result.throughput_per_s,
        "keys_per_s": round(result.throughput_per_s * scenario.keys_per_request, 1),
        "latency_ms": dataclasses.asdict(latency),
        "dispatch_lag_p99_ms": result.dispatch_lag_ms.p99,
        "send_lag_p99_ms": result.send_lag_ms.p99,
        "peak_connections": result.peak_connections,
        "client_cpu_fraction": result.client_cpu_fraction,
        "client_bound": result.client_bound,
        "client_bound_reason": result.client_bound_reason,
        "server_cpu_fraction": None if server is None else round(server, 3),
        "server_loop_cpu_fraction": None if loop0 is None or loop1 is None else round((loop1 - loop0) / window, 3),
        "triton_cpu_fraction": None if triton is None else round(triton, 3),
        "other_cpu_fraction": None if other is None else round(max(other, 0.0), 3),
        "load_avg_1m": round(load_1m, 2),
        "event_loop": result.event_loop,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each latency percentile (and of throughput and CPU) across repetitions."""
    out: dict[str, Any] = {"repetitions": len(runs)}
    for name in PERCENTILES + ("max",):
        values = [r["latency_ms"][name] for r in runs if r["latency_ms"].get(name) is not None]
        out[name] = {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None
    for name in (
        "throughput_per_s",
        "server_cpu_fraction",
        "server_loop_cpu_fraction",
        "triton_cpu_fraction",
        "client_cpu_fraction",
        "other_cpu_fraction",
    ):
        values = [r[name] for r in runs if r.get(name) is not None]
        out[name] = round(statistics.median(values), 3) if values else None
    others = [r["other_cpu_fraction"] for r in runs if r.get("other_cpu_fraction") is not None]
    out["other_cpu_fraction_max"] = max(others) if others else None
    errors: dict[str, int] = {}
    for r in runs:
        for kind, count in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    out["errors"] = errors
    out["completed"] = sum(r["completed"] for r in runs)
    out["scheduled"] = sum(r["scheduled"] for r in runs)
    out["client_bound"] = any(r["client_bound"] for r in runs)
    return out


def _saturation(
    spec: loadgen.LoadSpec, scenario: Scenario, p99_bound_ms: float, step_s: float, max_steps: int
) -> dict[str, Any]:
    found = loadgen.saturation(
        spec, scenario.saturation_start, p99_bound_ms=p99_bound_ms, step_s=step_s, max_steps=max_steps
    )
    return {
        "max_rate_held": None if found.max_rate_held is None else round(found.max_rate_held, 1),
        "max_keys_per_s_held": None
        if found.max_rate_held is None
        else round(found.max_rate_held * scenario.keys_per_request, 1),
        "stopped_because": found.stopped_because,
        "client_bound": found.client_bound,
        "p99_bound_ms": p99_bound_ms,
        "step_s": step_s,
        "steps": [
            {
                "rate": round(step.rate_per_s, 1),
                "held": step.held,
                "reason": step.reason,
                "throughput_per_s": step.result.throughput_per_s,
                "p50_ms": step.result.latency_ms.p50,
                "p99_ms": step.result.latency_ms.p99,
                "errors": step.result.errors,
                "client_cpu_fraction": step.result.client_cpu_fraction,
            }
            for step in found.steps
        ],
    }


# -- the index's memory ------------------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def retained_bytes(root: Any) -> int:
    """The size of `root`'s attributes and what they hold (dicts, lists, tuples, bytes, strings, numbers, numpy arrays),
    each object counted once: the memory a :class:`PrecomputedIndex` keeps alive."""
    seen: set[int] = set()
    total = 0
    stack = list(vars(root).values())
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            total += sys.getsizeof(obj)  # its data included when it owns it
            if isinstance(obj.base, np.ndarray | bytes | bytearray):
                stack.append(obj.base)
            elif obj.base is not None:  # a view of a foreign buffer (Arrow's): count what it shows
                total += obj.nbytes
            continue
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
    return total


def _index_memory_child(table_path: str, keys: int) -> dict[str, Any]:
    """In a fresh process: the output table tiled to `keys` rows with new keys, indexed; sizes and times."""
    import pyarrow as pa

    from scoring.adapters import deltalog
    from scoring.core.index import Layout, PrecomputedIndex

    snap = deltalog.snapshot(table_path, key="output.table")
    assert snap is not None
    source = snap.dataset().to_table()
    layout = Layout.of(source.schema, (KEY,), snap.partition_columns)
    gc.collect()
    rss_read = _rss_bytes()  # the readers loaded and the demo's table read; nothing tiled or indexed yet
    rss_start = (
        None if rss_read is None else rss_read - source.get_total_buffer_size()
    )  # less that table, dropped below
    take = pa.array(np.arange(keys) % source.num_rows)
    table = source.take(take)
    table = table.set_column(table.schema.get_field_index(KEY), KEY, pa.array(np.arange(keys, dtype=np.int64)))
    del source, take
    gc.collect()
    rss_table = _rss_bytes()
    started = time.perf_counter()
    index = PrecomputedIndex.build(table, layout, table_version=snap.version, source=table_path)
    build_s = time.perf_counter() - started
    gc.collect()
    rss_built = _rss_bytes()
    arrow_table_bytes = table.nbytes
    del table
    gc.collect()
    pa.default_memory_pool().release_unused()
    rss_after = _rss_bytes()
    retained = retained_bytes(index)
    probe = [str(k) for k in np.random.default_rng(1).integers(0, keys, 100_000)]
    started = time.perf_counter()
    for k in probe:
        index.get(k)
    lookup_us = (time.perf_counter() - started) / len(probe) * 1e6
    record_bytes = statistics.mean(len(hit.record) for k in probe[:10_000] if (hit := index.get(k)) is not None)
    per_million = 1e6 / keys / 1e6  # bytes -> MB per million keys
    return {
        "keys": len(index),
        "columns": layout.predictions,
        "build_s": round(build_s, 2),
        "retained_mb": round(retained / 1e6, 1),
        "retained_mb_per_million_keys": round(retained * per_million, 1),
        "bytes_per_key": round(retained / keys, 1),
        "record_bytes_mean": round(record_bytes, 1),
        "rss_delta_mb": None if rss_built is None or rss_table is None else round((rss_built - rss_table) / 1e6, 1),
        "rss_delta_mb_per_million_keys": None
        if rss_built is None or rss_table is None
        else round((rss_built - rss_table) * per_million, 1),
        "rss_after_dropping_table_mb": None if rss_after is None else round(rss_after / 1e6, 1),
        "rss_kept_mb_per_million_keys": None
        if rss_after is None or rss_start is None
        else round((rss_after - rss_start) * per_million, 1),
        "arrow_table_mb": round(arrow_table_bytes / 1e6, 1),
        "lookup_us": round(lookup_us, 3),
    }


def index_memory(table_path: str, keys: int) -> dict[str, Any]:
    """:func:`_index_memory_child` in a Python process of its own (a clean RSS to measure from)."""
    code = (
        "import json, sys; from scoring.tools.bench_serve_runs import _index_memory_child; "
        "print(json.dumps(_index_memory_child(sys.argv[1], int(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, table_path, str(keys)],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise ScoringError(f"bench-serve: measuring the index's memory failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
