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
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from scoring.errors import ConfigError, ScoringError
from scoring.tools import demo, loadgen

_LOGGER = logging.getLogger(__name__)

PROFILE_ENV = "SCORING_BENCH_SERVE_PROFILE"
"""Environment variable: a directory; when set, each service process runs under cProfile and leaves its profile there."""
KEY = "customer_id"
N_FEATURES = 20
LIVE_KEY_BASE = 1 << 40
"""Live requests use keys from here on: never in the output table, so every one is scored live."""
BATCH_KEYS = 100
"""Keys per request of the ``batch-100`` scenario."""
PERCENTILES = ("p50", "p95", "p99", "p999")
WARMUP_S = 1.0
"""A short untimed run before each scenario's first timed run (the first live batch loads the model's session)."""
PAUSE_S = 0.5
"""Between runs, so that the service has drained the previous one."""
READY_TIMEOUT_S = 180.0
IDLE_THRESHOLD = 0.15
BUSY_WARNING = 0.25
"""Other processes using more than this much of a core during a run make its figures suspect (said beside the aims)."""
"""Before each run, wait (``wait_idle_s``) until processes other than the bench's use less than this much of a core."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One kind of request against one service."""

    name: str
    server: str
    """``embedded`` (the service with runtime.backend embedded) or ``triton`` (runtime.backend triton)."""
    what: str
    rates: tuple[float, ...]
    """Requests per second of the fixed-rate runs."""
    saturation_start: float
    """The saturation search's first rate (requests/s)."""
    keys_per_request: int = 1
    aim: tuple[float, float] | None = None
    """(rate, p99 ms): what we aim for on a 2-core machine, reported against, never asserted."""

    @property
    def base(self) -> str:
        """The scenario's name without its ``@<ref>`` (the same load against the code of another commit)."""
        return self.name.split("@", 1)[0]


def with_baseline(scenarios: Sequence[Scenario], ref: str) -> list[Scenario]:
    """Each scenario, followed by its twin against services started from the code at git `ref` (``<name>@<ref>``,
    server ``<server>@<ref>``): the same requests, rates and repetitions, interleaved with the current code's, so
    that one invocation compares the two on one machine in one window."""
    out = []
    for s in scenarios:
        out += [s, dataclasses.replace(s, name=f"{s.name}@{ref}", server=f"{s.server}@{ref}")]
    return out


def checkout(ref: str, into: Path) -> Path:
    """The ``scoring`` package as of git `ref`, extracted (``git archive``) under `into`; the directory to put first
    on a child's ``sys.path``."""
    root = Path(__file__).resolve().parents[2]
    target = into / f"code-{ref.replace('/', '_')}"
    if target.exists():
        import shutil

        shutil.rmtree(target)
    target.mkdir(parents=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", "--format=tar", ref, "scoring"], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise ConfigError(
            f"--baseline-ref {ref}: git archive failed: {detail.decode(errors='replace').strip() or e}"
        ) from None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


SCENARIOS: dict[str, Scenario] = {
    "precomputed": Scenario(
        "precomputed", "embedded", "GET /v1/scores/{key}, a random existing key", (500, 1000, 2000), 1000, 1, (1000, 2.0)
    ),
    "precomputed-features": Scenario(
        "precomputed-features", "embedded",
        "POST /v1/score, a random existing key + its 20 features (a hit: the features are checked, not used)",
        (500, 1000, 2000), 1000, 1, (1000, 2.0),
    ),
    "live-embedded": Scenario(
        "live-embedded", "embedded", "POST /v1/score, absent key + 20 features, onnxruntime in process",
        (100, 250, 500), 250, 1, (500, 10.0),
    ),
    "live-triton": Scenario(
        "live-triton", "triton", "POST /v1/score, absent key + 20 features, Triton (gRPC, Python backend)",
        (100, 250, 500), 250, 1, (500, 10.0),
    ),
    "batch-100": Scenario(
        "batch-100", "embedded", f"POST /v1/score, {BATCH_KEYS} random existing keys per request",
        (20, 50, 100), 50, BATCH_KEYS,
    ),
}  # fmt: skip


def scenarios_for(names: Sequence[str] | None, rates: Sequence[float] | None = None) -> list[Scenario]:
    """The chosen scenarios (all by default), with `rates` replacing each one's fixed rates when given."""
    chosen = list(names or SCENARIOS)
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"--scenario {unknown}: choose from {list(SCENARIOS)}")
    if rates is not None and (not rates or any(not r > 0 for r in rates)):
        raise ConfigError(f"--rate must be positive, got {list(rates)}")
    out = []
    for name in dict.fromkeys(chosen):
        scenario = SCENARIOS[name]
        if rates:
            scenario = dataclasses.replace(scenario, rates=tuple(float(r) for r in rates))
        out.append(scenario)
    return out


# -- set-up: the demo lake and model, the batch output, Triton ------------------------------------------------------


@dataclasses.dataclass
class _Setup:
    workdir: Path
    tracking_uri: str
    model_uri: str
    input_table: str
    output_table: str
    keys: np.ndarray
    """Every key of the output table."""
    features: list[str]
    batch_run_s: float | None
    """How long the batch job took (None: its output was there already)."""


def _job_tree(setup_dir: Path, tracking_uri: str) -> dict[str, Any]:
    return {
        "name": "bench-serve",
        "input": {"table": str(setup_dir / "lake" / "features"), "key": KEY},
        "model": {"uri": f"models:/{demo.DEMO_MODEL}@{demo.DEMO_ALIAS}", "tracking_uri": tracking_uri},
        "runtime": {"backend": "embedded", "batch_rows": 10_000},
        "output": {"table": str(setup_dir / "lake" / "churn_scores"), "partition_by": ["ds"]},
    }


def _write_yaml(path: Path, tree: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _prepare(workdir: Path, rows: int, spark, on_phase) -> _Setup:
    """The demo lake and model (once), and the batch job's output table (once: kept for the next run)."""
    from scoring import build_job_config
    from scoring.adapters import deltalog

    on_phase("demo lake and model")
    made = demo.create_demo(workdir, rows)
    tree = _job_tree(workdir, made["tracking_uri"])
    output = tree["output"]["table"]
    batch_s = None
    if deltalog.version(output) is None:
        on_phase("the batch job (scoring run), once")
        clock = time.monotonic()
        if spark is not None:
            from scoring.modes.batch import run as run_batch

            run_batch(build_job_config(tree, source="bench-serve"), spark=spark, reporter=_QuietReporter())
        else:  # in a process of its own: no JVM left in this one while the service is measured
            config = _write_yaml(workdir / "batch.yaml", tree)
            done = subprocess.run(
                [sys.executable, "-m", "scoring.cli", "run", str(config)],
                capture_output=True,
                text=True,
                env=_child_env(),
                check=False,
            )
            if done.returncode != 0:
                raise ScoringError(
                    f"bench-serve: the batch job failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}",
                    hint=f"run it alone: scoring run {config}",
                )
        batch_s = time.monotonic() - clock
    keys = deltalog.read(output, [KEY], key="output.table")
    if keys is None or keys.num_rows == 0:
        raise ScoringError(f"bench-serve: {output} holds no scores to serve")
    return _Setup(
        workdir=workdir,
        tracking_uri=made["tracking_uri"],
        model_uri=made["model"],
        input_table=made["input_table"],
        output_table=output,
        keys=np.unique(keys.column(0).to_numpy()),
        features=demo.feature_names(N_FEATURES),
        batch_run_s=batch_s,
    )


def _export_for_triton(setup: _Setup) -> Path:
    """The demo model exported to a Triton model repository for the Python backend (the Triton bundled here)."""
    from scoring.adapters.registry import resolve_model
    from scoring.adapters.triton_export import export_model

    repository = setup.workdir / "triton-repository"
    ref = resolve_model(setup.model_uri, setup.tracking_uri)
    export_model(ref, repository, target="python", n_features=N_FEATURES)
    return repository


class _QuietReporter:
    """Progress lines of the batch job and the service go to the debug log (the bench shows its own progress)."""

    def step(self, message: str) -> None:
        _LOGGER.debug("%s", message)

    def tasks(self, label: str, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    env.pop(PROFILE_ENV, None)
    return env


# -- the service, a process of its own -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_s(pid: int, tid: int | None = None) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads), or of its thread `tid` alone, from /proc; None
    where that cannot be read."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _children_cpu_s() -> float:
    """CPU seconds of this process's children that have been waited for (the load generator's runs)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_s() -> float | None:
    """Core-seconds every process on the machine has spent busy since boot (/proc/stat), to tell what else ran."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / _CLOCK_TICKS  # all but idle and iowait


def _group_cpu_s(pgid: int) -> float | None:
    """CPU seconds of every live process in process group `pgid` (Triton and its Python-backend stubs)."""
    total, seen = 0.0, False
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
            seen = True
    return total if seen else None


class _Service:
    """``scoring serve CONFIG --port N`` as a child process (in its own session), its log in the work directory."""

    def __init__(
        self,
        name: str,
        config: Path,
        workdir: Path,
        profile_dir: Path | None = None,
        sets: Sequence[str] = (),
        code: Path | None = None,
    ) -> None:
        self.name = name
        self.code = code
        """Where the ``scoring`` package this service runs comes from (None: this one)."""
        self.config = config
        self.sets = list(sets)
        self.workdir = workdir
        self.profile = None if profile_dir is None else profile_dir / f"{name}.prof"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{name.replace('/', '_')}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> _Service:
        args = ["serve", str(self.config), "--port", str(self.port)]
        for item in self.sets:
            args += ["--set", item]
        if self.profile is None:
            command = [sys.executable, "-m", "scoring.cli", *args]
        else:
            self.profile.parent.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-c", _PROFILED, str(self.profile), *args]
        env = _child_env()
        if self.code is not None:  # another commit's code first on the path (and as the working directory)
            env["PYTHONPATH"] = os.pathsep.join([str(self.code), *filter(None, [env.get("PYTHONPATH")])])
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=None if self.code is None else self.code,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ScoringError(
                    f"bench-serve: scoring serve ({self.name}) exited {self.proc.returncode} before it was ready: "
                    f"{self.log_tail()}"
                )
            if _get(self.url + "/v2/health/ready")[0] == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise ScoringError(f"bench-serve: scoring serve ({self.name}) not ready in {timeout_s:g} s: {self.log_tail()}")

    def cpu_s(self) -> tuple[float | None, float | None]:
        """CPU seconds of the whole process, and of its main thread alone (the event loop: HTTP, routes, JSON)."""
        if self.proc is None:
            return None, None
        return _proc_cpu_s(self.proc.pid), _proc_cpu_s(self.proc.pid, self.proc.pid)

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (requests in flight finish, the profile is written), then SIGKILL to its group after `timeout_s`."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _LOGGER.warning(
                "scoring serve (%s, pid %d) ignored SIGTERM for %g s: killing it", self.name, proc.pid, timeout_s
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if self.profile is not None and self.profile.exists():
            _summarise_profile(self.profile)


_PROFILED = """
import cProfile, signal, sys
def _exit(signum, frame):
    raise SystemExit(0)
# uvicorn restores the handler it found and raises SIGTERM again once it has shut down: this one turns that into an
# exit that runs the finally blocks (the service's close, and the profile's dump below)
signal.signal(signal.SIGTERM, _exit)
out, sys.argv = sys.argv[1], ["scoring", *sys.argv[2:]]
profile = cProfile.Profile()
profile.enable()
try:
    from scoring.cli import main
    main()
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""
"""``scoring serve`` under cProfile (the main thread: the event loop, the routes, JSON), its profile dumped at exit."""


def _summarise_profile(path: Path, top: int = 40) -> None:
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(str(path), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    path.with_suffix(".txt").write_text(text.getvalue())


def _get(url: str, timeout_s: float = 2.0) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, urllib.error.URLError):
        return None, b""


def _probe(url: str, request: loadgen.Request) -> dict[str, Any]:
    """Send one request of the mix and return what came back (status, and the parts of the body that say how it was
    answered): the check that a scenario measures the path it names."""
    sent = urllib.request.Request(url + request.path, data=request.body or None, method=request.method)
    for name, value in request.headers:
        sent.add_header(name, value)
    try:
        with urllib.request.urlopen(sent, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    data = json.loads(body) if body else None
    items = data if isinstance(data, list) else [data]
    answer: dict[str, Any] = {"status": status, "items": len(items)}
    for field in ("source", "backend", "stale", "model_version", "error"):
        values = sorted({str(item.get(field)) for item in items if isinstance(item, dict) and field in item})
        if values:
            answer[field] = values[0] if len(values) == 1 else values
    return answer


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
        "import json, sys; from scoring.tools.bench_serve import _index_memory_child; "
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
