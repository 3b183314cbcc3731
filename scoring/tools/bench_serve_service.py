"""`scoring bench-serve`'s set-up (the demo lake and model, the batch output, the model exported for Triton) and the
service under test: ``scoring serve`` in a process of its own, its CPU, the machine's, and its profile
(:mod:`scoring.tools.bench_serve` has the whole story)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scoring.errors import ScoringError
from scoring.tools import demo, loadgen
from scoring.tools.bench_serve_scenarios import KEY, N_FEATURES, PROFILE_ENV, READY_TIMEOUT_S

_LOGGER = logging.getLogger(__name__)

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
