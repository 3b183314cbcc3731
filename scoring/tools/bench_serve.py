"""`scoring bench-serve`: latency of ``scoring serve`` under an open-loop load, measured from outside the service.

The service runs as ``scoring serve`` in a process of its own (started here, stopped by pid with SIGTERM at the end);
the load comes from :mod:`scoring.tools.loadgen` in another process, on loopback, open-loop: requests leave on a fixed
schedule and each latency counts from its **scheduled** send time, so a server (or client) that falls behind shows
up in the figures instead of slowing the schedule down. Each run is bounded (``--duration-s``, then at most the
load generator's drain timeout).

Scenarios (``--scenario``, all by default):

- ``precomputed``: ``GET /v1/scores/{key}`` over random keys of the batch output table (a hit in the in-memory index);
- ``live-embedded``: ``POST /v1/score`` with a key absent from the table and its 20 features: scored live in the
  service's process (onnxruntime), micro-batched;
- ``live-triton``: the same, through a second service whose ``runtime.backend`` is ``triton`` (``launch: external``)
  and a real ``tritonserver`` on loopback serving the demo model exported for its Python backend;
- ``batch-100``: ``POST /v1/score`` with a list of 100 existing keys (no features): 100 precomputed answers per request.

Each scenario runs at fixed rates (requests/s; ``--rate`` replaces them), ``--repeat`` times, interleaved (repetition
1 of every scenario and rate, then repetition 2, ...) so that drift in the machine's speed hits every figure alike;
each percentile is reported as the median of the repetitions with their min and max. Then each scenario's saturation
throughput: the rate is stepped up until a step does not hold (p99 over ``--saturation-p99-ms``, an error, or the
client falling behind; see :func:`scoring.tools.loadgen.saturation`).

Beside the latencies, each run records the CPU the service's process used (all of it, and its main thread alone: the
event loop, which runs the routes and the JSON), Triton's process group's (``live-triton``), the client's own CPU and
lateness, and what every *other* process on the machine used meanwhile (from ``/proc/stat``): on a 2-core machine the
client, the service and Triton share the cores, and a figure taken while something else ran says so. With
``wait_idle_s`` (``--wait-idle-s``), each run first waits, up to that long, for the other processes to go quiet.

Also measured: the precomputed index's memory per million keys (a :class:`~scoring.core.index.PrecomputedIndex` built
in a fresh process from the demo's output table tiled to ``--index-keys`` rows with new keys): the retained size of its
objects, the process's RSS growth, the build time and a lookup's time.

Profiling: with ``SCORING_BENCH_SERVE_PROFILE=<directory>`` in the environment, each service process runs under
cProfile (its main thread: the event loop and the routes) and leaves ``<directory>/<server>.prof`` and a text summary
``<server>.txt`` (the top functions by own time) when it stops. cProfile slows the server down: figures taken with it
are for finding where the time goes, not for reporting.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from scoring.errors import ConfigError
from scoring.tools import loadgen
from scoring.tools.bench_serve_runs import (
    _Budget,
    _OthersMeter,
    _run_one,
    _saturation,
    _spec,
    index_memory,
    requests_for,
    retained_bytes,
    summarise,
    wait_idle,
)
from scoring.tools.bench_serve_scenarios import (
    BATCH_KEYS,
    BUSY_WARNING,
    IDLE_THRESHOLD,
    KEY,
    LIVE_KEY_BASE,
    N_FEATURES,
    PAUSE_S,
    PERCENTILES,
    PROFILE_ENV,
    READY_TIMEOUT_S,
    SCENARIOS,
    WARMUP_S,
    Scenario,
    checkout,
    scenarios_for,
    with_baseline,
)
from scoring.tools.bench_serve_service import (
    _export_for_triton,
    _group_cpu_s,
    _job_tree,
    _prepare,
    _probe,
    _Service,
    _Setup,
    _write_yaml,
)

__all__ = [  # this module's own, and the scenarios', runs' and service's public names it re-exports
    "BATCH_KEYS",
    "BUSY_WARNING",
    "IDLE_THRESHOLD",
    "KEY",
    "LIVE_KEY_BASE",
    "N_FEATURES",
    "PAUSE_S",
    "PERCENTILES",
    "PROFILE_ENV",
    "READY_TIMEOUT_S",
    "SCENARIOS",
    "Scenario",
    "WARMUP_S",
    "checkout",
    "index_memory",
    "print_report",
    "requests_for",
    "retained_bytes",
    "run_bench_serve",
    "scenarios_for",
    "summarise",
    "wait_idle",
    "with_baseline",
]

_LOGGER = logging.getLogger(__name__)


# -- the benchmark ------------------------------------------------------------------------------------------------


def _serve_tree(setup: _Setup, backend: str, triton_url: str | None) -> dict[str, Any]:
    tree = _job_tree(setup.workdir, setup.tracking_uri)
    tree["name"] = f"bench-serve-{backend}"
    tree["serve"] = {"host": "127.0.0.1"}
    if backend == "triton":
        tree["runtime"] = {
            "backend": "triton",
            "triton": {"launch": "external", "url": triton_url, "protocol": "grpc"},
        }
    return tree


def _git_state() -> dict[str, Any]:
    """The commit the services ran, and which files of the package differed from it (the figures belong to both)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.rstrip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", ".")
    return {
        "commit": git("rev-parse", "HEAD"),
        "changed": None if changed is None else [line[3:] for line in changed.splitlines()],
    }


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("uvicorn", "fastapi", "starlette", "orjson", "uvloop", "httptools", "onnxruntime", "tritonclient"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def run_bench_serve(
    *,
    scenarios: Sequence[Scenario] | None = None,
    duration_s: float = 5.0,
    repeat: int = 3,
    saturation: bool = True,
    saturation_p99_ms: float = 100.0,
    saturation_step_s: float = 3.0,
    saturation_max_steps: int = 12,
    index_keys: int = 1_000_000,
    rows: int = 100_000,
    output: Path | None = Path("bench-serve-results.json"),
    workdir: Path = Path(".bench/serve"),
    serve_sets: Sequence[str] = (),
    wait_idle_s: float = 0.0,
    busy_retries: int = 2,
    wait_budget_s: float = 300.0,
    baseline_ref: str | None = None,
    spark=None,
    console=None,
) -> dict[str, Any]:
    """Set up (demo lake, model, the batch output; Triton when a scenario needs it), start the services, run every
    scenario at each rate `repeat` times (interleaved), then each scenario's saturation search and the index's memory;
    print the tables on `console` (if given), write `output` (if given) and return the report. `spark` runs the batch
    job in this process (tests); by default it runs as ``scoring run`` in a process of its own. `serve_sets`
    (``key=value``) go to both services as ``--set`` (e.g. ``serve.batch_window_ms=0``), to try a setting. With
    `wait_idle_s`, each timed run waits up to that long for other processes to leave the cores (see :func:`wait_idle`);
    a run (or a saturation search) during which they used more than ``BUSY_WARNING`` of a core is done again, up to
    `busy_retries` times, while `wait_budget_s` (all the waiting and the runs done again, together) lasts; what they
    used is reported with every run either way (``other_cpu_fraction``), and the runs set aside are kept in the
    report (``discarded_busy_runs``). With `baseline_ref` (a git revision), every scenario also runs against
    services started from that commit's code (:func:`with_baseline`), interleaved with the current code's: what a
    change costs, measured in one run."""
    from rich.progress import Progress

    from scoring.launchers import triton_server

    scenarios = list(scenarios) if scenarios is not None else scenarios_for(None)
    if baseline_ref is not None:
        scenarios = with_baseline(scenarios, baseline_ref)
    if duration_s <= 0 or repeat < 1 or rows < BATCH_KEYS or index_keys < 0:
        raise ConfigError(
            f"--duration-s must be positive, --repeat at least 1, --rows at least {BATCH_KEYS}, --index-keys >= 0"
        )
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    profile = os.environ.get(PROFILE_ENV)
    profile_dir = Path(profile).resolve() if profile else None
    started = time.monotonic()
    runs: dict[str, dict[float, list[dict[str, Any]]]] = {s.name: {r: [] for r in s.rates} for s in scenarios}
    saturations: dict[str, dict[str, Any]] = {}
    probes: dict[str, dict[str, Any]] = {}
    services: dict[str, _Service] = {}
    triton = None
    with contextlib.ExitStack() as stack, Progress(console=console, transient=True, disable=console is None) as bar:
        task = bar.add_task("bench-serve: set-up", total=None)

        def phase(text: str) -> None:
            bar.update(task, description=f"bench-serve: {text}")

        setup = _prepare(workdir, rows, spark, phase)
        needed = {s.server for s in scenarios}
        if any(n.startswith("triton") for n in needed):
            phase("exporting the model and starting tritonserver")
            repository = _export_for_triton(setup)
            triton = stack.enter_context(
                triton_server.running_server(repository, workdir=workdir / "triton", ready_timeout_s=120)
            )
        code = None if baseline_ref is None else checkout(baseline_ref, workdir)
        for server in sorted(needed):
            backend, _, ref = server.partition("@")
            phase(f"starting scoring serve ({server})")
            tree = _serve_tree(setup, backend, None if triton is None else triton.grpc_url)
            config = _write_yaml(workdir / f"serve-{backend}.yaml", tree)
            service = _Service(server, config, workdir, profile_dir, serve_sets, code if ref else None)
            stack.callback(service.stop)
            services[server] = service.start()
        mixes = {s.name: requests_for(s, setup.keys, setup.features, seed=i) for i, s in enumerate(scenarios)}
        for s in scenarios:
            probes[s.name] = _probe(services[s.server].url, mixes[s.name][0])
            phase(f"warming up {s.name}")
            loadgen.run_in_subprocess(_spec(services[s.server].url, mixes[s.name], min(s.rates), WARMUP_S, seed=99))
        triton_pgid = None if triton is None else triton.pid
        budget = _Budget(wait_budget_s)
        discarded: list[dict[str, Any]] = []

        def ours() -> float:
            total = sum(service.cpu_s()[0] or 0.0 for service in services.values())
            return total + ((_group_cpu_s(triton_pgid) or 0.0) if triton_pgid is not None else 0.0)

        total = repeat * sum(len(s.rates) for s in scenarios)
        bar.update(task, total=total, completed=0)
        for i in range(repeat):  # interleaved: drift in the machine's speed hits every scenario and rate alike
            for s in scenarios:
                for rate in s.rates:
                    phase(f"{s.name} at {rate:,.0f}/s ({i + 1}/{repeat})")
                    service = services[s.server]
                    spec = _spec(service.url, mixes[s.name], rate, duration_s, seed=i)
                    pgid = triton_pgid if s.server.startswith("triton") else None
                    for attempt in range(1 + busy_retries):
                        clock = time.monotonic()
                        waiting = wait_idle_s > 0 and budget.left() > 0
                        quiet = wait_idle(ours, min(wait_idle_s, budget.left())) if waiting else {}
                        run = {**_run_one(spec, service, pgid, s, i), **quiet, "attempt": attempt + 1}
                        time.sleep(PAUSE_S)
                        others = run.get("other_cpu_fraction")
                        if others is None or others <= BUSY_WARNING or attempt == busy_retries or budget.left() <= 0:
                            budget.spend(quiet.get("waited_s", 0.0))
                            break
                        budget.spend(time.monotonic() - clock)
                        discarded.append(run)  # another process took the cores: measure it again
                    runs[s.name][rate].append(run)
                    bar.advance(task)
        if saturation:
            for s in scenarios:
                spec = _spec(services[s.server].url, mixes[s.name], s.saturation_start, saturation_step_s, seed=7)
                for attempt in range(1 + busy_retries):
                    phase(f"saturation of {s.name}" + (f" (again: {attempt + 1})" if attempt else ""))
                    clock = time.monotonic()
                    if wait_idle_s > 0 and budget.left() > 0:
                        wait_idle(ours, min(wait_idle_s, budget.left()))
                    meter = _OthersMeter(ours)
                    found = _saturation(spec, s, saturation_p99_ms, saturation_step_s, saturation_max_steps)
                    found["other_cpu_fraction"] = meter.cores()
                    found["attempt"] = attempt + 1
                    others = found["other_cpu_fraction"]
                    if others is None or others <= BUSY_WARNING or attempt == busy_retries or budget.left() <= 0:
                        break
                    budget.spend(time.monotonic() - clock)
                saturations[s.name] = found
        phase("stopping the services")
        for service in services.values():
            service.stop()
        logs = {name: service.log_tail(4000) for name, service in services.items()}
        memory = None
        if index_keys:
            phase(f"the index's memory at {index_keys:,} keys")
            memory = index_memory(setup.output_table, index_keys)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": _versions(),
        "method": "open loop, one process for the load generator, one per service, loopback; latency from each "
        "request's scheduled send time to the last byte of its response; percentiles are the median of the "
        "repetitions (min, max)",
        "duration_s": duration_s,
        "repeat": repeat,
        "table_keys": int(len(setup.keys)),
        "batch_run_s": None if setup.batch_run_s is None else round(setup.batch_run_s, 1),
        "profiled": profile_dir is not None,
        "serve_sets": list(serve_sets),
        "baseline_ref": baseline_ref,
        "wait_idle_s": wait_idle_s,
        "busy_retries": busy_retries,
        "wait_budget_s": wait_budget_s,
        "wait_budget_spent_s": round(budget.spent, 1),
        "discarded_busy_runs": discarded,
        "git": _git_state(),
        "elapsed_s": round(time.monotonic() - started, 1),
        "scenarios": {
            s.name: {
                "what": s.what,
                "server": s.server,
                "keys_per_request": s.keys_per_request,
                "aim": None if s.aim is None else {"rate": s.aim[0], "p99_ms": s.aim[1]},
                "probe": probes.get(s.name),
                "rates": {
                    f"{rate:g}": {"runs": runs[s.name][rate], **summarise(runs[s.name][rate])} for rate in s.rates
                },
                "saturation": saturations.get(s.name),
            }
            for s in scenarios
        },
        "index_memory": memory,
        "service_logs": logs,
    }
    if output is not None:
        output.write_text(json.dumps(report, indent=2, default=str))
    if console is not None:
        print_report(console, report)
    return report


# -- the tables -----------------------------------------------------------------------------------------------------


def _spread(cell: dict[str, float] | None, repeat: int) -> str:
    if cell is None:
        return "-"
    text = f"{cell['median']:.2f}"
    if repeat > 1:
        text += f" ({cell['min']:.2f}-{cell['max']:.2f})"
    return text


def print_report(console, report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not console.is_terminal:  # a file or a pipe: do not squeeze the table into 80 columns
        console = Console(file=console.file, width=220)
    repeat = report["repeat"]
    table = Table(
        title=f"scoring serve, open loop: {report['duration_s']:g} s per run, {repeat} run(s) per rate, "
        f"{report['cores']} cores; latency ms, median" + (" (min-max)" if repeat > 1 else "") + " of the runs"
    )
    for col in ("scenario", "req/s", "done/sched", "errors", "p50", "p95", "p99", "p99.9", "got/s", "server CPU",
                "client CPU", "others' CPU (max)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, s in report["scenarios"].items():
        for rate, r in s["rates"].items():
            errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
            cpu = "-" if r["server_cpu_fraction"] is None else f"{r['server_cpu_fraction']:.0%}"
            if r.get("server_loop_cpu_fraction") is not None:
                cpu += f" (loop {r['server_loop_cpu_fraction']:.0%})"
            if r.get("triton_cpu_fraction") is not None:
                cpu += f" + triton {r['triton_cpu_fraction']:.0%}"
            client = "-" if r["client_cpu_fraction"] is None else f"{r['client_cpu_fraction']:.0%}"
            if r["client_bound"]:
                client += " (bound)"
            others = "-" if r.get("other_cpu_fraction_max") is None else f"{r['other_cpu_fraction_max']:.0%}"
            table.add_row(
                name,
                f"{float(rate):,.0f}" + (f" ({float(rate) * s['keys_per_request']:,.0f} keys)" if s["keys_per_request"] > 1 else ""),
                f"{r['completed']:,}/{r['scheduled']:,}",
                errors,
                *(_spread(r[p], repeat) for p in PERCENTILES),
                "-" if r["throughput_per_s"] is None else f"{r['throughput_per_s']:,.0f}",
                cpu,
                client,
                others,
            )  # fmt: skip
    console.print(table)
    sat = Table(title="saturation: the highest rate whose step held (p99 within bound, no errors, client on time)")
    for col in ("scenario", "max req/s held", "keys/s", "p99 bound ms", "stopped because", "steps (req/s: p99 ms)"):
        sat.add_column(
            col, justify="left" if col in ("scenario", "stopped because", "steps (req/s: p99 ms)") else "right"
        )
    shown = False
    for name, s in report["scenarios"].items():
        found = s.get("saturation")
        if not found:
            continue
        shown = True
        steps = ", ".join(f"{st['rate']:,.0f}: {st['p99_ms']}" for st in found["steps"])
        sat.add_row(
            name,
            "-" if found["max_rate_held"] is None else f"{found['max_rate_held']:,.0f}",
            "-" if found["max_keys_per_s_held"] is None else f"{found['max_keys_per_s_held']:,.0f}",
            f"{found['p99_bound_ms']:g}",
            found["stopped_because"],
            steps,
        )
    if shown:
        console.print(sat)
    memory = report.get("index_memory")
    if memory:
        console.print(
            f"precomputed index, {memory['keys']:,} keys (prediction columns {', '.join(memory['columns'])}): "
            f"{memory['retained_mb_per_million_keys']:,.0f} MB per million keys retained by its objects "
            f"({memory['bytes_per_key']:,.0f} B/key, a record (the JSON answered) {memory['record_bytes_mean']:,.0f} B); RSS +"
            f"{memory['rss_delta_mb_per_million_keys']} MB per million keys while building, +"
            f"{memory['rss_kept_mb_per_million_keys']} MB kept once the table is dropped; built in "
            f"{memory['build_s']} s; a lookup {memory['lookup_us']} µs",
            highlight=False,
        )
    for name, s in report["scenarios"].items():
        probe = s.get("probe") or {}
        console.print(f"{name}: {s['what']}; a sample answer: {probe}", highlight=False, markup=False)
        aim = s.get("aim")
        if aim:
            r = s["rates"].get(f"{aim['rate']:g}")
            value = None if r is None or r["p99"] is None else r["p99"]["median"]
            verdict = (
                "not run" if value is None else ("met" if value < aim["p99_ms"] and not r["errors"] else "not met")
            )
            shown_value = "-" if value is None else f"{value:.2f} ms"
            others = None if r is None else r.get("other_cpu_fraction_max")
            busy = (
                f"; other processes used up to {others:.0%} of a core during these runs: rerun on a quiet machine"
                if others is not None and others > BUSY_WARNING
                else ""
            )
            console.print(
                f"aim {name}: p99 under {aim['p99_ms']:g} ms at {aim['rate']:,.0f} requests/s: {shown_value} ({verdict})"
                + busy,
                highlight=False,
            )
    if report.get("profiled"):
        console.print(
            f"profiled with cProfile ({PROFILE_ENV}): figures are slower than unprofiled ones", highlight=False
        )
