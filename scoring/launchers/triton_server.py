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

Use :func:`running_server` in tests and scripts, :func:`start_server` / :func:`stop_server` with :func:`save_state` /
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
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from scoring.errors import BackendUnavailableError, ModelError, ScoringError

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
_POLL_S = 0.1
_INSTALL_HINT = (
    "install the pinned stack (`make` or `pip install -c constraints.txt -e .`), which includes nvidia-pytriton"
)

# The Popen objects of servers this process started, so that stopping one also reaps it (no zombie keeps its pid).
_PROCESSES: dict[int, subprocess.Popen[bytes]] = {}

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


def _tritonserver_root() -> Path:
    """``site-packages/pytriton/tritonserver``, found without importing pytriton (its import is slow and noisy)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ScoringError(
            "the Triton server is not installed: the Python package `pytriton` (nvidia-pytriton) is missing",
            hint=_INSTALL_HINT,
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def find_tritonserver() -> Path:
    """The ``tritonserver`` binary bundled with nvidia-pytriton; a `ScoringError` with a how-to-fix hint if missing."""
    binary = _tritonserver_root() / "bin" / "tritonserver"
    if not binary.is_file():
        raise ScoringError(f"the Triton server binary is missing: {binary}", hint=_INSTALL_HINT)
    if not os.access(binary, os.X_OK):
        raise ScoringError(
            f"the Triton server binary is not executable: {binary}",
            hint=f"chmod +x {binary}, or reinstall nvidia-pytriton",
        )
    return binary


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _library_path() -> list[str]:
    """Directories for ``LD_LIBRARY_PATH``, in order: this interpreter's libpython first, then the wheel's libraries."""
    root = _tritonserver_root()
    candidates: list[Path] = []
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        candidates.append(Path(libdir))
        if not any(Path(libdir).glob(f"libpython{_python_version()}*.so*")):
            _LOGGER.warning(
                "no shared libpython%s in %s: the Python backend stub may load another copy of Python",
                _python_version(),
                libdir,
            )
    candidates += [
        root.parent.parent / "nvidia_pytriton.libs",  # auditwheel's copy of the server's libraries
        root / "external_libs",  # older nvidia-pytriton layouts
        root / "lib",
    ]
    seen: list[str] = []
    for path in candidates:
        if path.is_dir() and str(path) not in seen:
            seen.append(str(path))
    return seen


def _server_env() -> dict[str, str]:
    """The environment the server and its Python stubs run in."""
    env = dict(os.environ)
    ld_path = _library_path()
    if env.get("LD_LIBRARY_PATH"):
        ld_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld_path)
    # Not resolved: a virtual environment's bin/python is a symlink to the base interpreter.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
    return env


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


def _prepare_backends(workdir: Path) -> Path:
    """A writable backend directory in `workdir`: the wheel's Python backend plus the stub for the running Python."""
    root = _tritonserver_root()
    source = root / "backends" / "python"
    stub = root / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    if not source.is_dir():
        raise ScoringError(f"the Triton Python backend is missing: {source}", hint=_INSTALL_HINT)
    if not stub.is_file():
        available = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if p.is_dir())
        raise ScoringError(
            f"nvidia-pytriton has no Python backend stub for Python {_python_version()} (it has {available})",
            hint="run with one of those Python versions, or install an nvidia-pytriton release built for this one",
        )
    backends = workdir / "backends"
    target = backends / "python"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return backends


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


def _log_tail(log_path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """What a start-up failure message shows of the server log: the lines reporting a problem (CPU-only noise left
    out), then the last `lines` lines outside the settings tables."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
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


def _failed_models(log_path: Path) -> list[str]:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
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
    auto_ports = http_port is None and grpc_port is None and metrics_port is None
    attempts = 2 if auto_ports else 1
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(
                binary, repo, http_port, grpc_port, metrics_port, ready_timeout_s, workdir, models, extra_args
            )
        except _PortClash as clash:
            if attempt == attempts:
                raise clash.error from None
            _LOGGER.info("tritonserver lost a port race (%s); trying again with new ports", clash.error.message)
    raise AssertionError("unreachable")  # pragma: no cover


class _PortClash(Exception):
    """Internal: the server could not bind a port; carries the error to raise if no retry is left."""

    def __init__(self, error: BackendUnavailableError) -> None:
        super().__init__(error.message)
        self.error = error


def _start_once(
    binary: Path,
    repo: Path,
    http_port: int | None,
    grpc_port: int | None,
    metrics_port: int | None,
    ready_timeout_s: float,
    workdir: str | Path | None,
    models: Sequence[str] | None,
    extra_args: Sequence[str],
) -> ServerHandle:
    free = iter(_free_ports(3))
    http_port = http_port or next(free)
    grpc_port = grpc_port or next(free)
    metrics_port = metrics_port or next(free)

    owns_workdir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="scoring-triton-")) if workdir is None else Path(workdir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / LOG_NAME
    proc: subprocess.Popen[bytes] | None = None
    try:
        backends = _prepare_backends(work)
        flags = _supported_flags(str(binary))
        metrics_enabled = metrics_on_loopback(flags)
        metrics_port = metrics_port if metrics_enabled else 0
        cmd = _command(binary, repo, backends, http_port, grpc_port, metrics_port, models, extra_args, flags)
        _LOGGER.info(
            "starting tritonserver for %s (http %d, grpc %d, metrics %s)",
            repo,
            http_port,
            grpc_port,
            metrics_port if metrics_enabled else "off",
        )
        _LOGGER.debug("tritonserver command: %s", cmd)
        with open(log_path, "wb") as log:  # a fresh log: failures are read from it
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(),
                cwd=work,
                start_new_session=True,  # its own process group: stop_server can kill the server and its stubs at once
            )
        _PROCESSES[proc.pid] = proc
        handle = ServerHandle(
            pid=proc.pid,
            host=LOOPBACK,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            repository=str(repo),
            workdir=str(work),
            log_path=str(log_path),
            owns_workdir=owns_workdir,
            metrics_enabled=metrics_enabled,
        )
        _wait_ready(handle, proc, ready_timeout_s, models)
        return handle
    except BaseException:
        if proc is not None:
            _kill_group(proc.pid, proc, timeout_s=5.0)
        # Keep the log of a failed start for the user (the error names it); drop the 20 MB backend copy.
        shutil.rmtree(work / "backends", ignore_errors=True)
        if owns_workdir and not log_path.exists():
            shutil.rmtree(work, ignore_errors=True)
        raise


def _wait_ready(
    handle: ServerHandle, proc: subprocess.Popen[bytes], timeout_s: float, models: Sequence[str] | None
) -> None:
    """Block until the server and the requested models are ready; raise with the log's tail if it never gets there."""
    started = time.monotonic()
    deadline = started + timeout_s
    url = f"http://{handle.http_url}/v2/health/ready"
    log_path = Path(handle.log_path)
    while True:
        code = proc.poll()
        if code is not None:
            _raise_start_failure(handle, f"exited with status {code} before it was ready", log_path)
        if _http_status(url) == 200 and all(model_ready(handle, name) for name in models or ()):
            _LOGGER.info(
                "tritonserver pid %d ready in %.1f s: grpc %s, http %s, log %s",
                handle.pid,
                time.monotonic() - started,
                handle.grpc_url,
                handle.http_url,
                handle.log_path,
            )
            return
        if time.monotonic() >= deadline:
            _raise_start_failure(handle, f"was not ready within {timeout_s:g} s", log_path, timed_out=True)
        time.sleep(_POLL_S)


def _raise_start_failure(handle: ServerHandle, what: str, log_path: Path, *, timed_out: bool = False) -> None:
    tail = _log_tail(log_path)
    failed = _failed_models(log_path)
    if failed:
        raise ModelError(
            f"Triton could not load model(s) {', '.join(repr(m) for m in failed)} from repository {handle.repository}; "
            f"the server {what}. From the log {log_path}:\n{tail}",
            hint="fix the model's config.pbtxt or model.py (the log names the error), or pass models=[...] to "
            "serve only the others",
        )
    if "already in use" in tail:
        raise _PortClash(
            BackendUnavailableError(
                f"tritonserver for {handle.repository} could not bind its ports (http {handle.http_port}, grpc "
                f"{handle.grpc_port}, metrics {handle.metrics_port}); the server {what}. From the log {log_path}:\n"
                f"{tail}",
                hint="choose free ports, or leave them unset to pick free ones",
            )
        )
    if timed_out:
        raise BackendUnavailableError(
            f"tritonserver for repository {handle.repository} {what}. From the log {log_path}:\n{tail}",
            hint="raise ready_timeout_s if models are slow to load, or read the log for what it was waiting on",
        )
    raise ScoringError(
        f"tritonserver for repository {handle.repository} {what}. From the log {log_path}:\n{tail}",
        hint="read the log above; check the repository layout (<model>/config.pbtxt, <model>/<version>/) and any "
        "extra arguments",
    )


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    proc = _PROCESSES.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) no longer runs
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _group_alive(pgid: int) -> bool:
    """True while a process of group `pgid` runs; zombies (exited, never reaped by an adoptive init) do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return True
    for entry in proc_dir.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


def _is_tritonserver(pid: int) -> bool:
    """Whether `pid` runs a tritonserver (guards against signalling a process that reused a stale pid)."""
    if pid in _PROCESSES:
        return True
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return _pid_alive(pid)  # no /proc: trust the pid
    return os.path.basename(argv0) == b"tritonserver"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> bool:
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _kill_group(pid: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM the server, wait up to `timeout_s`, then SIGKILL whatever is left of its process group.

    Only the server gets SIGTERM: it finishes in-flight requests, unloads the models and ends its Python stubs itself
    (about 3 s with one Python model: it checks once a second). Stubs it leaves behind share its process group.
    """
    if proc is None or proc.poll() is None:  # a reaped child's pid may already belong to someone else
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, proc, timeout_s):
        _LOGGER.warning("tritonserver pid %d did not stop within %g s of SIGTERM; killing it", pid, timeout_s)
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, proc, 5.0)
    # Python stubs the server left behind share its process group.
    deadline = time.monotonic() + 2.0
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if _group_alive(pid):
        _signal_group(pid, signal.SIGKILL)
    _PROCESSES.pop(pid, None)


def stop_server(handle: ServerHandle, timeout_s: float = 30.0) -> None:
    """Stop the server: SIGTERM, wait up to `timeout_s`, then SIGKILL its process group (the server and its stubs).

    Idempotent: a server that is already gone is fine. Removes the work directory if the launcher created it.
    """
    proc = _PROCESSES.get(handle.pid)
    if proc is not None or (_pid_alive(handle.pid) and _is_tritonserver(handle.pid)):
        _LOGGER.info("stopping tritonserver pid %d (%s)", handle.pid, handle.repository)
        _kill_group(handle.pid, proc, timeout_s)
    elif _pid_alive(handle.pid):
        _LOGGER.warning("pid %d no longer runs tritonserver; leaving it alone", handle.pid)
    else:
        _LOGGER.debug("tritonserver pid %d already stopped", handle.pid)
    if handle.owns_workdir:
        shutil.rmtree(handle.workdir, ignore_errors=True)


def is_alive(handle: ServerHandle) -> bool:
    """True while the handle's ``tritonserver`` process runs (whether or not it is ready)."""
    return _pid_alive(handle.pid) and _is_tritonserver(handle.pid)


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
