"""A Spark standalone cluster on loopback: one master and N workers, each worker with its own cores, memory, work
folder and, optionally, its own Triton sidecar: the topology of one sidecar per executor pod, on one machine.

Every process is started from the ``spark-class`` of the installed pyspark (``$SPARK_HOME/bin``) as a
:class:`~scoring.launchers.process.ManagedProcess`, in a process group of its own, and stopped by its pid (its group:
the worker's executors and their Python workers share it), never by name. The cluster's state lives in one folder (``cluster.json``, the logs, each worker's ``work/``), so that
``status`` and ``down`` work from another process than ``up``::

    cluster = Cluster(".scoring/cluster").up(workers=2)       # or: scoring cluster up
    cluster.master_url                                        # spark://127.0.0.1:<port>, for spark.master
    Cluster(".scoring/cluster").down()                        # or: scoring cluster down

**Sidecar discovery.** A worker with a sidecar is started with :data:`TRITON_URL_ENV` (its sidecar's gRPC address) and
:data:`TRITON_HTTP_URL_ENV` in its environment. In standalone mode a worker starts its executors with its own
environment, and an executor's Python workers inherit the executor's (tests/integration/test_cluster.py checks it), so
the Triton predictor of every Python worker reads the address of the sidecar beside it
(:meth:`scoring.adapters.triton.TritonSpec.create`). A Kubernetes pod does the same with ``127.0.0.1:8001``: the
sidecar shares the pod's loopback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scoring.adapters.triton import TRITON_HTTP_URL_ENV, TRITON_URL_ENV
from scoring.errors import ScoringError
from scoring.launchers import triton_server
from scoring.launchers.process import (
    CHILDREN,
    ManagedProcess,
    NotReadyError,
    PortClashError,
    ProcessExitedError,
    file_tail,
    free_ports,
    group_members,
    process_tree,
    stop_pid,
    write_json,
)
from scoring.launchers.process import start_time as _started

_LOGGER = logging.getLogger(__name__)

__all__ = ["TRITON_HTTP_URL_ENV", "TRITON_URL_ENV", "Cluster", "ClusterState", "WorkerState"]

LOOPBACK = "127.0.0.1"
"""The only address the master, the workers and their sidecars bind to."""

DEFAULT_STATE_DIR = Path(".scoring/cluster")
"""Where ``scoring cluster up`` keeps the cluster's state, relative to the current directory."""

STATE_DIR_ENV = "SCORING_CLUSTER_DIR"
"""Environment variable that overrides :data:`DEFAULT_STATE_DIR`."""

STATE_NAME = "cluster.json"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
_POLL_S = 0.2
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def default_state_dir() -> Path:
    """``$SCORING_CLUSTER_DIR`` if set, else :data:`DEFAULT_STATE_DIR`."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


@dataclasses.dataclass(frozen=True)
class WorkerState:
    """One worker as ``cluster.json`` records it."""

    index: int
    pid: int
    """The worker's JVM; also its process group id (its executors and their Python workers are in that group)."""
    port: int
    web_port: int
    cores: int
    memory: str
    work_dir: str
    """Spark's ``--work-dir``: one folder per application and executor (``<app-id>/<executor-id>/``)."""
    log_path: str
    triton: dict[str, Any] | None = None
    """The worker's own sidecar (:class:`scoring.launchers.triton_server.ServerHandle` as JSON), or None."""

    @property
    def sidecar(self) -> triton_server.ServerHandle | None:
        return triton_server.ServerHandle.from_json(self.triton) if self.triton else None


@dataclasses.dataclass(frozen=True)
class ClusterState:
    """What ``cluster.json`` holds: the master and the workers, with their pids and ports."""

    master_pid: int
    master_port: int
    master_web_port: int
    master_log: str
    workers: tuple[WorkerState, ...]

    @property
    def master_url(self) -> str:
        return f"spark://{LOOPBACK}:{self.master_port}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterState:
        try:
            workers = tuple(WorkerState(**w) for w in data["workers"])
            return cls(**{**data, "workers": workers})
        except (KeyError, TypeError) as e:
            raise ScoringError(
                f"the cluster state is unreadable: {e}",
                hint="stop its processes by hand if any run (their pids are in cluster.json), then delete the folder",
            ) from e


def spark_class() -> Path:
    """``$SPARK_HOME/bin/spark-class`` of the installed pyspark."""
    from scoring.adapters.spark import spark_submit_env

    path = Path(spark_submit_env()["SPARK_HOME"]) / "bin" / "spark-class"
    if not path.is_file():
        raise ScoringError(f"spark-class is missing: {path}", hint="reinstall pyspark (`make setup`)")
    return path


def _is_ours(pid: int, main_class: str) -> bool:
    """Whether `pid` still runs a JVM of `main_class` (a stale pid may belong to someone else by now)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return main_class.encode() in cmdline and state != "Z"


tree = process_tree
"""The live processes of a group and all their descendants (:func:`scoring.launchers.process.process_tree`): Spark's
Python daemon moves itself (and the Python workers it forks) into a process group of its own, so a worker's group
alone misses them."""


def executor_pids(worker: WorkerState) -> list[int]:
    """The executor JVMs `worker` runs now: processes of its group whose command is Spark's executor backend."""
    found = []
    for pid in group_members(worker.pid):
        with contextlib.suppress(OSError):
            if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def python_worker_pids(worker: WorkerState) -> list[int]:
    """The Spark Python workers (``pyspark.daemon`` and its forks) under `worker`'s executors."""
    found = []
    for pid in tree(worker.pid):
        with contextlib.suppress(OSError):
            if b"pyspark.daemon" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def _json(url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


class _SparkProcess(ManagedProcess):
    """The master or one worker: a ``spark-class`` JVM whose arguments and readiness the cluster gives
    (:attr:`args`, :attr:`ready`), its log and state file (``<role>.json``) in its own folder."""

    poll_s = _POLL_S

    def __init__(
        self, role: str, main_class: str, folder: Path, log_path: Path, env: dict[str, str], die_with_parent: bool
    ) -> None:
        super().__init__(
            log_path=log_path,
            cwd=folder,
            state_path=folder / f"{role.split()[0]}.json",
            die_with_parent=die_with_parent,
            auto_ports=True,
        )
        self.name = f"Spark {role}"
        self.main_class, self.extra_env = main_class, env
        self.port, self.web_port = free_ports(2)
        self.args: Callable[[], list[str]] = list
        self.ready: Callable[[], bool] = bool

    def command(self) -> list[str]:
        return [str(spark_class()), self.main_class, *self.args()]

    def ports(self) -> dict[str, int]:
        return {"port": self.port, "web_port": self.web_port}

    def pick_ports(self) -> None:
        self.port, self.web_port = free_ports(2)

    def is_ready(self) -> bool:
        return self.ready()

    def environment(self) -> dict[str, str]:
        from scoring.adapters.spark import spark_submit_env

        env = spark_submit_env()
        env.update(
            {
                "SPARK_LOCAL_IP": LOOPBACK,
                "SPARK_LOCAL_HOSTNAME": LOOPBACK,
                "PYSPARK_PYTHON": sys.executable,
                "SPARK_NO_DAEMONIZE": "1",
                **self.extra_env,
            }
        )
        for key in (TRITON_URL_ENV, TRITON_HTTP_URL_ENV):  # only a worker with a sidecar has them
            if key not in self.extra_env:
                env.pop(key, None)
        return env

    def failure(self, what: str, log_text: str, *, timed_out: bool, clash: bool) -> ScoringError:
        detail = f"the {self.name} {what}; its log {self.log_path}:\n{file_tail(self.log_path)}"
        if clash:
            return PortClashError(detail, hint="bring the cluster up again: it picks other free ports")
        if timed_out:
            return NotReadyError(detail, hint="raise the timeout on a slow machine, or read the log")
        return ProcessExitedError(detail, hint="read the log above")


def _worker_args(worker: _SparkProcess, cores: int, memory: str, work: Path, master_url: str) -> list[str]:
    return [
        "--host",
        LOOPBACK,
        "--port",
        str(worker.port),
        "--webui-port",
        str(worker.web_port),
        "--cores",
        str(cores),
        "--memory",
        memory,
        "--work-dir",
        str(work),
        master_url,
    ]


class Cluster:
    """A standalone cluster whose state lives in `state_dir` (see the module doc)."""

    def __init__(self, state_dir: str | Path | None = None, *, die_with_parent: bool = False) -> None:
        """`die_with_parent`: the processes die with this process (tests); ``scoring cluster up`` leaves it off so
        that the cluster outlives the command."""
        self.state_dir = Path(state_dir if state_dir is not None else default_state_dir()).expanduser().resolve()
        self.die_with_parent = die_with_parent
        self._processes: dict[int, _SparkProcess] = {}

    # -- state

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_NAME

    def state(self) -> ClusterState | None:
        """The recorded cluster, or None when none was started here (or it was brought down)."""
        try:
            return ClusterState.from_json(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise ScoringError(f"cluster state {self.state_path} is not valid JSON: {e}") from e

    def _save(self, state: ClusterState) -> None:
        write_json(self.state_path, state.to_json())

    @property
    def master_url(self) -> str:
        state = self._require()
        return state.master_url

    def _require(self) -> ClusterState:
        state = self.state()
        if state is None:
            raise ScoringError(f"no cluster recorded in {self.state_dir}", hint="scoring cluster up")
        return state

    def spark_conf(self) -> dict[str, str]:
        """The driver settings a job on this cluster needs: its master; a driver on loopback; the executors' Python
        (this interpreter, whose environment has the packages); and a driver that waits for every worker's executor
        before it schedules (so that tasks spread over the workers)."""
        state = self._require()
        cores = sum(w.cores for w in state.workers)
        return {
            "spark.master": state.master_url,
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            "spark.pyspark.python": sys.executable,
            "spark.executor.memory": min((w.memory for w in state.workers), key=_megabytes),
            "spark.cores.max": str(cores),
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
        }

    def run_overrides(self) -> list[str]:
        """The ``--set`` values that point a job at this cluster (``scoring run CONFIG --set ...``): its master and
        :meth:`spark_conf` (as one JSON value, without spaces, so a shell can split a list of them); with sidecars,
        ``runtime.triton.launch=external`` and worker 0's sidecar as ``runtime.triton.url`` (the driver's probe goes
        there; each executor uses its own worker's sidecar, see the module doc)."""
        conf = self.spark_conf()
        master = conf.pop("spark.master")
        sets = [f"spark.master={master}", "spark.conf=" + json.dumps(conf, separators=(",", ":"))]
        sidecar = self._require().workers[0].sidecar
        if sidecar is not None:
            sets += ["runtime.triton.launch=external", f"runtime.triton.url={sidecar.grpc_url}"]
        return sets

    # -- up

    def up(
        self,
        workers: int = 2,
        *,
        cores: int = 1,
        memory: str = "1g",
        triton_repository: str | Path | None = None,
        triton_models: Sequence[str] | None = None,
        timeout_s: float = 90.0,
    ) -> Cluster:
        """Start the master, then `workers` workers (each `cores` cores and `memory`), each with its own sidecar
        serving `triton_repository` when given; return once the master lists every worker ALIVE and every sidecar
        is ready. A cluster already running in this folder is an error; a failed start stops what it started."""
        if workers < 1:
            raise ScoringError(f"a cluster needs at least one worker, not {workers}")
        current = self.state()
        if current is not None:
            if self.alive_processes(current):
                raise ScoringError(
                    f"a cluster is already running from {self.state_dir} ({current.master_url})",
                    hint="scoring cluster down, then up again",
                )
            self.state_path.unlink()
        for stale in ("master", *(f"worker-{i}" for i in range(workers))):
            shutil.rmtree(self.state_dir / stale, ignore_errors=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ports = iter(free_ports(2 * workers))
        master_dir = self.state_dir / "master"
        master = _SparkProcess("master", MASTER_CLASS, master_dir, master_dir / "master.log", {}, self.die_with_parent)
        master.args = lambda: ["--host", LOOPBACK, "--port", str(master.port), "--webui-port", str(master.web_port)]
        master.ready = lambda: self.master_status(state) is not None
        state = ClusterState(0, master.port, master.web_port, str(master.log_path), ())
        self._processes = {}
        try:
            master.spawn()
            self._processes[master.pid or 0] = master
            state = ClusterState(master.pid or 0, master.port, master.web_port, str(master.log_path), ())
            self._save(state)
            try:
                master.wait_ready(timeout_s)
            except PortClashError:  # lost a race for its ports: once more on others
                master.pick_ports()
                master.spawn()
                self._processes[master.pid or 0] = master
                state = ClusterState(master.pid or 0, master.port, master.web_port, str(master.log_path), ())
                self._save(state)
                master.wait_ready(timeout_s)
            started: list[WorkerState] = []
            waiting: list[_SparkProcess] = []
            for index in range(workers):
                folder = self.state_dir / f"worker-{index}"
                work = folder / "work"
                work.mkdir(parents=True)
                sidecar = None
                env: dict[str, str] = {}
                if triton_repository is not None:
                    sidecar = triton_server.start_server(
                        triton_repository,
                        models=triton_models,
                        workdir=folder / "triton",
                        ready_timeout_s=timeout_s,
                        die_with_parent=self.die_with_parent,
                    )
                    env = {TRITON_URL_ENV: sidecar.grpc_url, TRITON_HTTP_URL_ENV: sidecar.http_url}
                worker = _SparkProcess(
                    f"worker {index}", WORKER_CLASS, folder, folder / "worker.log", env, self.die_with_parent
                )
                worker.port, worker.web_port = next(ports), next(ports)
                worker.args = functools.partial(_worker_args, worker, cores, memory, work, state.master_url)
                worker.ready = functools.partial(self._worker_alive, worker)
                pid = worker.spawn()
                self._processes[pid] = worker
                waiting.append(worker)
                sidecar_json = sidecar.to_json() if sidecar else None
                started.append(
                    WorkerState(
                        index,
                        pid,
                        worker.port,
                        worker.web_port,
                        cores,
                        memory,
                        str(work),
                        str(worker.log_path),
                        sidecar_json,
                    )
                )
                state = dataclasses.replace(state, workers=tuple(started))
                self._save(state)
            deadline = time.monotonic() + timeout_s
            for worker in waiting:
                worker.wait_ready(max(0.0, deadline - time.monotonic()))
        except BaseException:
            self.down()
            raise
        _LOGGER.info("Spark cluster %s up: %d workers (%s)", state.master_url, workers, self.state_dir)
        return self

    def master_status(self, state: ClusterState | None = None) -> dict[str, Any] | None:
        """The master's own view (its web UI's ``/json/``: workers, cores, applications), or None if it does not
        answer."""
        state = state or self._require()
        return _json(f"http://{LOOPBACK}:{state.master_web_port}/json/")

    def _worker_alive(self, worker: _SparkProcess) -> bool:
        return f"{LOOPBACK}:{worker.port}" in self.alive_workers()

    def alive_workers(self, state: ClusterState | None = None) -> set[str]:
        """``host:port`` of the workers the master lists as ALIVE."""
        status = self.master_status(state) or {}
        return {f"{w['host']}:{w['port']}" for w in status.get("workers", []) if w.get("state") == "ALIVE"}

    # -- status / down

    def alive_processes(self, state: ClusterState | None = None) -> list[int]:
        """Every live process of the cluster: the master's and each worker's group (executors and Python workers
        included), and each sidecar's group."""
        state = state or self.state()
        if state is None:
            return []
        pids: list[int] = []
        groups = [state.master_pid, *(w.pid for w in state.workers)]
        groups += [w.sidecar.pid for w in state.workers if w.sidecar is not None]
        for pgid in groups:
            pids += tree(pgid)
        return sorted(set(pids))

    def status(self) -> dict[str, Any]:
        """A plain summary: the master (url, pid, alive), each worker (pid, alive per the master, its sidecar)."""
        state = self._require()
        alive = self.alive_workers(state)
        return {
            "master": state.master_url,
            "master_pid": state.master_pid,
            "master_alive": _is_ours(state.master_pid, MASTER_CLASS),
            "state_dir": str(self.state_dir),
            "workers": [
                {
                    "index": w.index,
                    "pid": w.pid,
                    "address": f"{LOOPBACK}:{w.port}",
                    "alive": f"{LOOPBACK}:{w.port}" in alive and _is_ours(w.pid, WORKER_CLASS),
                    "cores": w.cores,
                    "memory": w.memory,
                    "executors": executor_pids(w),
                    "triton": (
                        None
                        if w.sidecar is None
                        else {
                            "pid": w.sidecar.pid,
                            "grpc": w.sidecar.grpc_url,
                            "http": w.sidecar.http_url,
                            "ready": triton_server.server_ready(w.sidecar),
                        }
                    ),
                }
                for w in state.workers
            ],
        }

    def down(self, timeout_s: float = 20.0) -> list[int]:
        """Stop everything by pid: the workers (SIGTERM: each stops its executors), the master, the sidecars; then
        SIGKILL, each by its pid, whatever is left of their process trees (:func:`tree`). Returns the pids still alive after that (none, normally);
        the state file is removed only when nothing is left."""
        state = self.state()
        if state is None:
            return []
        seen = {pid: _started(pid) for pid in self.alive_processes(state)}  # orphans lose their place in the tree
        for worker in state.workers:
            self._stop(worker.pid, WORKER_CLASS, timeout_s)
        self._stop(state.master_pid, MASTER_CLASS, timeout_s)
        for worker in state.workers:
            if worker.sidecar is not None:
                triton_server.stop_server(worker.sidecar)
        deadline = time.monotonic() + 5.0

        def still_alive() -> list[int]:
            same = [pid for pid, started in seen.items() if started is not None and _started(pid) == started]
            return sorted({*same, *self.alive_processes(state)})

        left = still_alive()
        while left and time.monotonic() < deadline:
            for pid in left:  # what the JVMs' own shutdown left behind, each by its pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                child = CHILDREN.get(pid)
                if child is not None and child.poll() is not None:
                    CHILDREN.pop(pid, None)
            time.sleep(_POLL_S)
            left = still_alive()
        if left:
            _LOGGER.warning("processes of the cluster still alive after down: %s", left)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()
        return left

    def _stop(self, pid: int, main_class: str, timeout_s: float) -> None:
        """Stop one JVM of the cluster by its pid (:func:`scoring.launchers.process.stop_pid`), if it still runs
        `main_class` (a stale pid may belong to someone else by now)."""
        if _is_ours(pid, main_class):
            stop_pid(pid, timeout_s, name=main_class.rsplit(".", 1)[-1])
        process = self._processes.pop(pid, None)
        if process is not None:
            process.stop(0)  # already stopped: records it in the process's own state file


def export_for_sidecars(config_path: str | Path, repository: str | Path) -> tuple[Path, list[str]]:
    """Export the model of the job config at `config_path` (its alias resolved now, once) into the Triton model
    `repository` the workers' sidecars serve, with the config's ``runtime.triton`` target and model settings; the
    repository and the model's name there."""
    from scoring.adapters.registry import resolve_model, signature_inputs
    from scoring.adapters.triton_export import export_model
    from scoring.config import load_job_config

    job = load_job_config(config_path)
    ref = resolve_model(job.model.uri, job.model.tracking_uri, job.model.registry_uri)
    names = job.input.features or signature_inputs(ref)
    triton = job.runtime.triton
    result = export_model(
        ref, repository, target=triton.target, model_config=triton.model, n_features=len(names) if names else None
    )
    return Path(repository), [result.model_name]


def _megabytes(memory: str) -> float:
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    text = memory.strip().lower().rstrip("b")
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text) / 2**20
