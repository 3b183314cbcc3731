"""A local Triton Inference Server: the ``tritonserver`` binary that ships in the ``nvidia-pytriton`` wheel, serving a
model repository of our own on loopback ports.

This is the sidecar of a laptop or CI machine (no Docker, no GPU); on Kubernetes the same repository is served by
NVIDIA's ``tritonserver`` image in the executor pod (``sidecars/``). The wheel's server has the Python backend only,
and needs three things to run a Python-backend model (see ``/work/shared/TRITON.md``):

- a writable backend directory: a copy of ``backends/python/`` with the stub built for the running Python put inside;
- ``LD_LIBRARY_PATH`` starting with the running interpreter's ``LIBDIR``, so that the stub embeds *this* libpython
  and not a system copy of another patch release;
- ``PATH`` starting with the virtual environment's ``bin/``: that is how the stub's Python finds the environment's
  packages (numpy, onnxruntime) when it imports a ``model.py``.

The server's CUDA, NVML and DCGM warnings at start-up are harmless on a CPU machine.

The server process is a :class:`~scoring.launchers.process.ManagedProcess` (started, stopped and killed by pid, its
failures explained with the log's tail). Use :func:`running_server` in tests and scripts, :func:`start_server` / :func:`stop_server` with :func:`save_state` /
:func:`load_state` where the server outlives the process that started it (``scoring sidecar start|status|stop``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from scoring.errors import ModelError, ScoringError
from scoring.launchers.process import (
    CHILDREN,
    ManagedProcess,
    NotReadyError,
    PortClashError,
    ProcessExitedError,
    ProcessRecord,
    pid_alive,
    stop_pid,
    write_json,
)
from scoring.launchers.triton_install import (
    _prepare_backends,
    _server_env,
    _tritonserver_root,
    find_tritonserver,
)

__all__ = [
    "DEFAULT_STATE_FILE",
    "LOG_NAME",
    "LOOPBACK",
    "STATE_FILE_ENV",
    "ServerHandle",
    "clear_state",
    "default_state_file",
    "find_tritonserver",
    "is_alive",
    "load_state",
    "model_ready",
    "running_server",
    "save_state",
    "server_ready",
    "start_server",
    "stop_server",
]

_LOGGER = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The only address the local server binds to."""

DEFAULT_STATE_FILE = Path(".scoring/sidecar.json")
"""Where ``scoring sidecar start`` records the running server, relative to the current directory."""

STATE_FILE_ENV = "SCORING_SIDECAR_STATE"
"""Environment variable that overrides :data:`DEFAULT_STATE_FILE`."""

LOG_NAME = "tritonserver.log"
"""The server's stdout and stderr (its own log and the Python stubs' output), inside the work directory."""

EXIT_TIMEOUT_S = 10
"""``--exit-timeout-secs``: how long the server waits for in-flight requests after SIGTERM."""

_LOG_TAIL_LINES = 20
_PROCESS_STATE_NAME = "tritonserver.json"

_PROCESSES = CHILDREN
"""The Popen objects of the children this process started (shared by every launcher: :mod:`.process`)."""

# A direct opener: loopback health checks must not go through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass(frozen=True)
class ServerHandle:
    """A started ``tritonserver`` process and where it listens; JSON-serialisable for the sidecar state file."""

    pid: int
    """Process id of the server; also its process group id (it is started in a session of its own)."""
    host: str
    """Always ``127.0.0.1``: the server binds to loopback only."""
    http_port: int
    grpc_port: int
    metrics_port: int
    """The metrics port on loopback; 0 when the server runs with metrics disabled (see `metrics_enabled`)."""
    repository: str
    """Absolute path of the model repository served."""
    workdir: str
    """Private directory holding the backend copy and the log."""
    log_path: str
    """The server's log (stdout and stderr), inside `workdir`."""
    owns_workdir: bool = True
    """True when the launcher created `workdir` and :func:`stop_server` removes it; False when the caller gave it."""
    metrics_enabled: bool = True
    """False when the launcher could not confirm that this server binds metrics to loopback only and started it with
    ``--allow-metrics=false`` instead (see :func:`_metrics_args`)."""

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient``."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http.InferenceServerClient``."""
        return f"{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str | None:
        """The Prometheus metrics endpoint; None when metrics are disabled."""
        if not self.metrics_enabled:
            return None
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def to_json(self) -> dict[str, Any]:
        """A plain dict for ``json.dump``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerHandle:
        """The handle :meth:`to_json` wrote; a `ScoringError` naming the missing or bad keys otherwise."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise ScoringError(
                f"Triton sidecar state lacks {missing}: {sorted(data)}",
                hint="stop the server by hand if it runs, delete the state file and start the sidecar again",
            )
        values = {k: v for k, v in data.items() if k in names}
        try:
            for key in ("pid", "http_port", "grpc_port", "metrics_port"):
                values[key] = int(values[key])
        except (TypeError, ValueError) as e:
            raise ScoringError(
                f"Triton sidecar state has a non-integer pid or port: {data}",
                hint="delete the state file and start the sidecar again",
            ) from e
        return cls(**values)


# --- the bundled server -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _supported_flags(binary: str) -> frozenset[str]:
    """The ``--flags`` that ``tritonserver --help`` lists (empty if it cannot tell)."""
    try:
        done = subprocess.run(
            [binary, "--help"], capture_output=True, text=True, timeout=30, env=_server_env(), check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        _LOGGER.debug("tritonserver --help failed: %s", e)
        return frozenset()
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", done.stdout + done.stderr))


def _free_port() -> int:
    """A loopback port that was free a moment ago (the server binds it soon after; a clash is retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    return ports


# --- start / stop -------------------------------------------------------------------------------------------------


def metrics_on_loopback(flags: frozenset[str]) -> bool:
    """Whether a server with these ``--help`` flags can bind its metrics endpoint to loopback only."""
    return "--metrics-address" in flags


def _metrics_args(flags: frozenset[str], metrics_port: int) -> list[str]:
    """Metrics on loopback only, or no metrics at all: this fails closed.

    A server without ``--metrics-address`` binds its metrics port to every interface, so when the flag cannot be
    confirmed (``--help`` failed, printed nothing, or does not list it) the server runs with ``--allow-metrics=false``.
    """
    if metrics_on_loopback(flags):
        return [f"--metrics-port={metrics_port}", f"--metrics-address={LOOPBACK}"]
    why = (
        "`tritonserver --help` failed or listed no flags"
        if not flags
        else "`tritonserver --help` does not list --metrics-address"
    )
    _LOGGER.warning(
        "cannot confirm that this tritonserver binds metrics to loopback only (%s): starting it with metrics "
        "disabled (--allow-metrics=false) rather than on all interfaces",
        why,
    )
    return ["--allow-metrics=false"]


def _command(
    binary: Path,
    repository: Path,
    backends: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    models: Sequence[str] | None,
    extra_args: Sequence[str],
    flags: frozenset[str] | None = None,
) -> list[str]:
    """The ``tritonserver`` command line; `flags` are what its ``--help`` lists (read from `binary` if None)."""
    if flags is None:
        flags = _supported_flags(str(binary))
    cmd = [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--http-address={LOOPBACK}",
        f"--http-port={http_port}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={grpc_port}",
        *_metrics_args(flags, metrics_port),
        f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
    ]
    caches = _tritonserver_root() / "caches"
    if caches.is_dir() and "--cache-directory" in flags:
        cmd.append(f"--cache-directory={caches}")
    if models is not None:
        cmd.append("--model-control-mode=explicit")
        cmd += [f"--load-model={name}" for name in models]
    else:
        cmd.append("--model-control-mode=none")  # load everything in the repository, once
    cmd += list(extra_args)
    return cmd


# Log lines that say something went wrong, and the start-up noise of a machine without a GPU that never matters here.
_PROBLEM = re.compile(r"^E\d{4} |error|failed|traceback|exception|unavailable", re.IGNORECASE)
_CPU_NOISE = re.compile(
    r"NVML|DCGM|CudaDriverHelper|pinned (system )?memory|CUDA driver|cuda_memory_manager", re.IGNORECASE
)


def _is_table(line: str) -> bool:
    """The server prints its settings as ASCII tables: long, and rarely what a failure is about."""
    return line.lstrip().startswith(("+-", "|"))


def _log_tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """What a start-up failure message shows of the server log `text`: the lines reporting a problem (CPU-only noise
    left out), then the last `lines` lines outside the settings tables."""
    all_lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    problems = [
        line for line in all_lines if _PROBLEM.search(line) and not _CPU_NOISE.search(line) and not _is_table(line)
    ]
    problems += [  # the model table's row for a model that failed holds its error
        line for line in all_lines if _is_table(line) and "UNAVAILABLE" in line
    ]
    tail = [line for line in all_lines if not _is_table(line)][-lines:]
    parts = []
    if problems:
        parts.append("problems reported:\n" + "\n".join(problems[-lines:]))
    parts.append("last lines:\n" + ("\n".join(tail) if tail else "(empty log)"))
    return "\n".join(parts)


_FAILED_MODEL = re.compile(r"(?:failed to load|load failed for model|failed to poll model) '(?P<name>[^']+)'")


def _failed_models(text: str) -> list[str]:
    names: list[str] = []
    for match in _FAILED_MODEL.finditer(text):
        name = match["name"]
        if name not in names:
            names.append(name)
    return names


def _http_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The HTTP status of GET `url`, or None when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.close()
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


class TritonProcess(ManagedProcess):
    """One ``tritonserver`` process serving `repo`, its backend copy, log and state file in `work` (what
    :func:`start_server` starts; the launcher contract suite uses it directly)."""

    name = "tritonserver"
    append_log = False  # a fresh log at each start: failures are read from it

    def __init__(
        self,
        binary: Path,
        repo: Path,
        work: Path,
        ports: tuple[int | None, int | None, int | None],
        models: Sequence[str] | None,
        extra_args: Sequence[str],
        die_with_parent: bool,
    ) -> None:
        super().__init__(
            log_path=work / LOG_NAME,
            cwd=work,
            state_path=work / _PROCESS_STATE_NAME,
            die_with_parent=die_with_parent,
            auto_ports=ports == (None, None, None),
        )
        self.binary, self.repo, self.models, self.extra_args = binary, repo, models, tuple(extra_args)
        free = iter(_free_ports(3))
        self.http_port, self.grpc_port, self.metrics_port = (p or next(free) for p in ports)
        self.metrics_enabled = True
        self.backends = work / "backends"

    def ports(self) -> dict[str, int]:
        return {"http": self.http_port, "grpc": self.grpc_port, "metrics": self.metrics_port}

    def pick_ports(self) -> None:
        self.http_port, self.grpc_port, self.metrics_port = _free_ports(3)

    def prepare(self) -> None:
        self.backends = _prepare_backends(self.cwd)
        self.metrics_enabled = metrics_on_loopback(_supported_flags(str(self.binary)))
        if not self.metrics_enabled:
            self.metrics_port = 0

    def environment(self) -> dict[str, str]:
        return _server_env()

    def command(self) -> list[str]:
        flags = _supported_flags(str(self.binary))
        return _command(
            self.binary,
            self.repo,
            self.backends,
            self.http_port,
            self.grpc_port,
            self.metrics_port,
            self.models,
            self.extra_args,
            flags,
        )

    def describe(self) -> str:
        metrics = self.metrics_port if self.metrics_enabled else "off"
        return f"tritonserver for {self.repo} (http {self.http_port}, grpc {self.grpc_port}, metrics {metrics})"

    def handle(self, owns_workdir: bool) -> ServerHandle:
        assert self._proc is not None
        return ServerHandle(
            pid=self._proc.pid,
            host=LOOPBACK,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            metrics_port=self.metrics_port,
            repository=str(self.repo),
            workdir=str(self.cwd),
            log_path=str(self.log_path),
            owns_workdir=owns_workdir,
            metrics_enabled=self.metrics_enabled,
        )

    def is_ready(self) -> bool:
        handle = self.handle(owns_workdir=False)
        return server_ready(handle) and all(model_ready(handle, name) for name in self.models or ())

    def failure(self, what: str, log_text: str, *, timed_out: bool, clash: bool) -> ScoringError:
        tail, failed, log_path = _log_tail(log_text), _failed_models(log_text), self.log_path
        if failed:
            return ModelError(
                f"Triton could not load model(s) {', '.join(repr(m) for m in failed)} from repository {self.repo}; "
                f"the server {what}. From the log {log_path}:\n{tail}",
                hint="fix the model's config.pbtxt or model.py (the log names the error), or pass models=[...] to "
                "serve only the others",
            )
        if clash:
            return PortClashError(
                f"tritonserver for {self.repo} could not bind its ports (http {self.http_port}, grpc "
                f"{self.grpc_port}, metrics {self.metrics_port}); the server {what}. From the log {log_path}:\n{tail}",
                hint="choose free ports, or leave them unset to pick free ones",
            )
        if timed_out:
            return NotReadyError(
                f"tritonserver for repository {self.repo} {what}. From the log {log_path}:\n{tail}",
                hint="raise ready_timeout_s if models are slow to load, or read the log for what it was waiting on",
            )
        return ProcessExitedError(
            f"tritonserver for repository {self.repo} {what}. From the log {log_path}:\n{tail}",
            hint="read the log above; check the repository layout (<model>/config.pbtxt, <model>/<version>/) and any "
            "extra arguments",
        )


def start_server(
    repository: str | Path,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    ready_timeout_s: float = 60.0,
    workdir: str | Path | None = None,
    models: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
    die_with_parent: bool = False,
) -> ServerHandle:
    """Start ``tritonserver`` on loopback serving `repository`, and return once it reports ready.

    Ports left None are free loopback ports (a port clash on those is retried once with new ones). With `models`, the
    server runs in explicit model-control mode and loads exactly those; otherwise it loads every model in the
    repository. `workdir` (created if missing, kept by :func:`stop_server`) holds the backend copy and the log; by
    default a temporary directory that :func:`stop_server` removes. `extra_args` go to ``tritonserver`` as they are.

    Raises `ModelError` when a model fails to load, `BackendUnavailableError` when the server is not ready within
    `ready_timeout_s` or cannot bind its ports, and `ScoringError` when the server is not installed or exits otherwise;
    each message carries the last lines of the server's log. A server that failed to start is killed.
    """
    repo = Path(repository).expanduser().resolve()
    if not repo.is_dir():
        raise ModelError(
            f"Triton model repository {repo} does not exist or is not a directory",
            hint="pass the directory that holds <model>/config.pbtxt and <model>/<version>/",
        )
    binary = find_tritonserver()
    owns_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="scoring-triton-")) if workdir is None else Path(workdir).expanduser().resolve()
    process = TritonProcess(
        binary, repo, work, (http_port, grpc_port, metrics_port), models, extra_args, die_with_parent
    )
    try:
        process.start(ready_timeout_s)
    except BaseException:
        # Keep the log of a failed start for the user (the error names it); drop the 20 MB backend copy.
        shutil.rmtree(work / "backends", ignore_errors=True)
        if owns_workdir and not process.log_path.exists():
            shutil.rmtree(work, ignore_errors=True)
        raise
    return process.handle(owns_workdir)


def _is_tritonserver(pid: int) -> bool:
    """Whether `pid` runs a tritonserver (guards against signalling a process that reused a stale pid)."""
    if pid in CHILDREN:
        return True
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return pid_alive(pid)  # no /proc: trust the pid
    return os.path.basename(argv0) == b"tritonserver"


def stop_server(handle: ServerHandle, timeout_s: float = 30.0) -> None:
    """Stop the server (:func:`scoring.launchers.process.stop_pid`): SIGTERM to the server alone (it finishes
    in-flight requests and ends its Python stubs), wait up to `timeout_s`, then SIGKILL its process group (the server
    and whatever stubs it left).

    Idempotent: a server that is already gone is fine. Removes the work directory if the launcher created it.
    """
    if handle.pid in CHILDREN or (pid_alive(handle.pid) and _is_tritonserver(handle.pid)):
        _LOGGER.info("stopping tritonserver pid %d (%s)", handle.pid, handle.repository)
        stop_pid(handle.pid, timeout_s, name="tritonserver")
    elif pid_alive(handle.pid):
        _LOGGER.warning("pid %d no longer runs tritonserver; leaving it alone", handle.pid)
    else:
        _LOGGER.debug("tritonserver pid %d already stopped", handle.pid)
    if handle.owns_workdir:
        shutil.rmtree(handle.workdir, ignore_errors=True)
    else:
        _mark_stopped(Path(handle.workdir) / _PROCESS_STATE_NAME)


def _mark_stopped(path: Path) -> None:
    with contextlib.suppress(ScoringError):
        record = ProcessRecord.load(path)
        if record is not None and not record.alive():
            write_json(path, dataclasses.asdict(dataclasses.replace(record, pid=None, start_time=None, command=[])))


def is_alive(handle: ServerHandle) -> bool:
    """True while the handle's ``tritonserver`` process runs (whether or not it is ready)."""
    return pid_alive(handle.pid) and _is_tritonserver(handle.pid)


def server_ready(handle: ServerHandle) -> bool:
    """True when the server answers ``GET /v2/health/ready`` with 200."""
    return _http_status(f"http://{handle.http_url}/v2/health/ready") == 200


def model_ready(handle: ServerHandle, model: str, version: str | None = None) -> bool:
    """True when the server reports `model` (or that `version` of it) ready for inference."""
    path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{urllib.parse.quote(str(version), safe='')}"
    return _http_status(f"http://{handle.http_url}{path}/ready") == 200


@contextlib.contextmanager
def running_server(repository: str | Path, **kwargs: Any) -> Iterator[ServerHandle]:
    """Start a server (arguments as :func:`start_server`), yield its handle, and always stop it."""
    handle = start_server(repository, **kwargs)
    try:
        yield handle
    finally:
        stop_server(handle)


# --- sidecar state for `scoring sidecar start|status|stop` ---------------------------------------------------------


def default_state_file() -> Path:
    """``$SCORING_SIDECAR_STATE`` if set, else :data:`DEFAULT_STATE_FILE` (relative to the current directory)."""
    override = os.environ.get(STATE_FILE_ENV)
    return Path(override) if override else DEFAULT_STATE_FILE


def save_state(handle: ServerHandle, state_file: Path | None = None) -> None:
    """Record `handle` in `state_file` (default :func:`default_state_file`), atomically."""
    path = Path(state_file) if state_file is not None else default_state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(handle.to_json(), indent=2) + "\n")
    os.replace(tmp, path)
    _LOGGER.debug("saved tritonserver state to %s", path)


def load_state(state_file: Path | None = None) -> ServerHandle | None:
    """The handle recorded in `state_file`, or None if there is none. It may describe a server that has since died:
    check :func:`is_alive`."""
    path = Path(state_file) if state_file is not None else default_state_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScoringError(
            f"Triton sidecar state file {path} is not valid JSON: {e}",
            hint=f"stop the server by hand if it runs, then delete {path}",
        ) from e
    if not isinstance(data, dict):
        raise ScoringError(
            f"Triton sidecar state file {path} does not hold a JSON object",
            hint=f"stop the server by hand if it runs, then delete {path}",
        )
    return ServerHandle.from_json(data)


def clear_state(state_file: Path | None = None) -> None:
    """Delete the state file if it exists."""
    path = Path(state_file) if state_file is not None else default_state_file()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
