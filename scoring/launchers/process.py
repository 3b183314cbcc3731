"""One managed child process: the base of every local launcher (Kafka broker, Redis server, Triton server, the
Spark cluster's master and workers).

A :class:`ManagedProcess` is an object with a **command**, a **readiness check** and a way to **explain its
failure**; everything else is written once, here:

- :meth:`~ManagedProcess.start` spawns the command in a process group of its own (a Ctrl-C in the terminal does not
  reach it), its stdout and stderr in a log file, and waits until the readiness check passes. A child that exits or
  never gets ready is killed and explained (:meth:`~ManagedProcess.failure`: the exit status, the log's tail, a port
  clash). A port clash on ports the launcher picked itself is retried once on other free loopback ports.
- :meth:`~ManagedProcess.stop` is the one stop strategy (:func:`stop_pid`): SIGTERM to the pid, wait, then SIGKILL to
  the whole process group, then SIGKILL whatever of the group outlived the leader (Triton's Python stubs).
  :meth:`~ManagedProcess.kill` is a crash: SIGKILL to the group at once. Both act by pid, never by name, and never
  signal a pid this process already reaped (it may be someone else's by now).
- die-with-parent: the child gets ``PR_SET_PDEATHSIG`` (Linux), so it dies with the Python process (strictly: the
  *thread*) that started it, even on SIGKILL.
- a state file (:class:`ProcessRecord`: pid, its start time, ports, command, log) written at each start and stop, so
  that another process can find the child and stop it (:func:`stop_recorded`).

Errors: :class:`NotReadyError`, :class:`PortClashError` (transient), :class:`ProcessExitedError` (terminal).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scoring.errors import BackendUnavailableError, ScoringError, Terminal

_LOGGER = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
"""The only address a launched process binds to."""

LOG_TAIL_LINES = 20
"""How many log lines a failure message quotes by default."""

_PR_SET_PDEATHSIG = 1
_GROUP_GRACE_S = 2.0
_CLASH = re.compile(r"Address already in use|BindException|already in use")

CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""The Popen objects of the processes this interpreter started and has not yet seen exit: their pids are signalled
only while these say they still run."""

_KILL_AT_EXIT: set[int] = set()
"""The children started to die with this process: an exiting interpreter kills those left running (the others, a
sidecar or a cluster started by a command, are meant to outlive it)."""


# --- errors -----------------------------------------------------------------------------------------------------------


class ProcessExitedError(ScoringError, Terminal):
    """A launched process exited before it was ready (a bad option, a broken model, a folder it cannot use); the
    message quotes its exit status and the tail of its log. Starting it again the same way fails the same way."""


class NotReadyError(BackendUnavailableError):
    """A launched process did not pass its readiness check in time; the message quotes the tail of its log."""


class PortClashError(NotReadyError):
    """A launched process could not bind its port(s): another process holds one."""


# --- processes by pid --------------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """The start time of live process `pid` (clock ticks since boot): with the pid, it names one process for good.
    None when `pid` does not run (a zombie does not)."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else int(fields[19])


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) counts as gone."""
    proc = CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _stat(pid)
    return fields is None or fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`, from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def parents() -> dict[int, int]:
    """pid -> parent pid of every live (not zombie) process, from ``/proc``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] != "Z":
                found[int(entry.name)] = int(fields[1])
    return found


def process_tree(pgid: int) -> list[int]:
    """The live processes of group `pgid` and all their descendants (a child may move to a group of its own: Spark's
    Python daemon does)."""
    links = parents()
    found = set(group_members(pgid))
    grew = True
    while grew:
        more = {pid for pid, ppid in links.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def _reap(pid: int) -> None:  # forget a child that has exited
    proc = CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        CHILDREN.pop(pid, None)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    proc = CHILDREN.get(pid)
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        CHILDREN.pop(pid, None)
        return True
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _group_gone(pgid: int, timeout_s: float = _GROUP_GRACE_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_pid(pid: int, timeout_s: float = 10.0) -> bool:
    """SIGKILL the process group led by `pid` (a crash) and wait up to `timeout_s`; True when it is gone."""
    if pid_alive(pid):
        _killpg(pid, signal.SIGKILL)
    gone = _wait_gone(pid, timeout_s)
    _group_gone(pid)  # the rest of the group dies a moment later
    _reap(pid)
    return gone


def stop_pid(pid: int, timeout_s: float = 10.0, *, name: str = "process") -> bool:
    """The one stop strategy: SIGTERM to `pid` alone (it shuts its children down itself), wait up to `timeout_s`,
    then SIGKILL its whole process group; then, within a short grace, SIGKILL whatever of the group outlived it.
    A pid that no longer runs (or that this process already reaped) is never signalled. True when it is gone."""
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout_s):
            _LOGGER.warning("%s pid %d did not stop within %g s of SIGTERM; killing its group", name, pid, timeout_s)
            _killpg(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
    if not _group_gone(pid):
        _killpg(pid, signal.SIGKILL)
    _reap(pid)
    return not pid_alive(pid)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child killed when this process dies (Linux; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _kill_leftovers() -> None:
    """At interpreter exit: kill the children this process started and never stopped (PDEATHSIG covers a crash)."""
    for pid, proc in list(CHILDREN.items()):
        if pid in _KILL_AT_EXIT and proc.poll() is None:
            _LOGGER.warning("killing pid %d (%s), left running at exit", pid, os.path.basename(str(proc.args[0])))
            _killpg(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


atexit.register(_kill_leftovers)


# --- ports and logs ---------------------------------------------------------------------------------------------------


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(port: int) -> bool:
    """Whether `port` can be bound on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free a moment ago, below the kernel's ephemeral range.

    A server keeps its ports across restarts; a port from the ephemeral range could be taken, while it is down, by
    some client's outgoing connection. Falls back to ephemeral ports if none below the range is free.
    """
    low = _ephemeral_low()
    rng = random.Random()
    ports: list[int] = []
    for _ in range(200):
        if len(ports) == count:
            return ports
        port = rng.randrange(10000, low) if low > 11000 else 0
        if port and port not in ports and port_free(port):
            ports.append(port)
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in ports:
            ports.append(port)
    return ports


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` non-blank lines of `text`, or ``(no output)``."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) if kept else "(no output)"


def file_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` non-blank lines of the file at `path`, or ``(no log)``."""
    try:
        return tail(Path(path).read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


# --- the state file ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """What a state file says of a launched process, so that another Python process can find it and stop it."""

    name: str
    pid: int | None
    """The process (and its process group); None once it was stopped."""
    start_time: int | None
    """Its start time (:func:`start_time`): a pid that runs something else now does not match."""
    ports: dict[str, int]
    command: list[str]
    log_path: str

    def alive(self) -> bool:
        """Whether the recorded process still runs (the same process: pid and start time)."""
        return self.pid is not None and self.start_time is not None and start_time(self.pid) == self.start_time

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the recorded process (:func:`stop_pid`) if it is still the one recorded; True when none runs."""
        if not self.alive():
            return True
        assert self.pid is not None
        return stop_pid(self.pid, timeout_s, name=self.name)

    @classmethod
    def load(cls, path: str | Path) -> ProcessRecord | None:
        """The record in the state file at `path`, or None if there is none; a `ScoringError` if it is unreadable."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            return cls(
                str(data["name"]),
                None if data["pid"] is None else int(data["pid"]),
                None if data.get("start_time") is None else int(data["start_time"]),
                {str(k): int(v) for k, v in data.get("ports", {}).items()},
                [str(a) for a in data.get("command", [])],
                str(data.get("log_path", "")),
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ScoringError(
                f"the process state file {path} is unreadable: {e}",
                hint="stop the process by hand if it runs, then delete the file",
            ) from e


def write_json(path: Path, data: Mapping[str, Any]) -> None:  # atomically: a reader never sees half a file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=2) + "\n")
    os.replace(tmp, path)


def stop_recorded(path: str | Path, timeout_s: float = 10.0) -> bool:
    """Stop the process recorded in the state file at `path` (from any Python process); True when none runs."""
    record = ProcessRecord.load(path)
    return True if record is None else record.stop(timeout_s)


# --- the base ---------------------------------------------------------------------------------------------------------


class ManagedProcess:
    """One child process on loopback: subclasses give :meth:`command`, :meth:`is_ready` and, where they can say more
    than the exit status and the log's tail, :meth:`failure` (see the module docstring for the rest)."""

    name = "process"
    """What log lines and messages call it."""
    append_log = True
    """Append to the log at each start (with a banner line), keeping the history of restarts; False: a fresh log."""
    poll_s = 0.1

    def __init__(
        self,
        *,
        log_path: str | Path,
        cwd: str | Path,
        state_path: str | Path | None = None,
        die_with_parent: bool = True,
        auto_ports: bool = False,
    ) -> None:
        """`auto_ports`: the ports were picked by the launcher, not given, so a clash at the first start is retried
        on others (:meth:`pick_ports`)."""
        self.log_path = Path(log_path)
        self.cwd = Path(cwd)
        self.state_path = Path(state_path) if state_path is not None else None
        self.die_with_parent = die_with_parent
        self.auto_ports = auto_ports
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd: list[str] = []
        self._log_offset = 0

    # -- what a subclass says

    def command(self) -> list[str]:
        raise NotImplementedError  # the command line to run

    def environment(self) -> dict[str, str] | None:
        return None  # the child's environment (None: this process's)

    def ports(self) -> dict[str, int]:
        return {}  # the loopback ports it listens on, by role ({"http": 8000})

    def is_ready(self) -> bool:
        """Whether the running child answers (called until it does, between checks that it still runs)."""
        raise NotImplementedError

    def pick_ports(self) -> None:
        """Choose other free ports after a clash (only called while :attr:`auto_ports`)."""

    def prepare(self) -> None:
        """Called before each spawn (write config files, format storage); may raise."""

    def state_extra(self) -> dict[str, Any]:
        return {}  # more keys for the state file

    def describe(self) -> str:  # how messages name it
        ports = ", ".join(f"{k} {v}" for k, v in self.ports().items())
        return f"{self.name} ({ports})" if ports else self.name

    def failure(self, what: str, log_text: str, *, timed_out: bool, clash: bool) -> ScoringError:
        """The error for a start that failed: `what` happened (``exited with status 1 before it was ready``),
        `log_text` is what it logged since this start, `clash` whether that says a port was taken."""
        detail = f"{self.describe()} {what}. From its log {self.log_path}:\n{tail(log_text)}"
        if clash:
            return PortClashError(detail, hint="pass free ports, or leave them unset to pick free ones")
        if timed_out:
            return NotReadyError(detail, hint="raise the start timeout on a slow machine, or read the log")
        return ProcessExitedError(detail, hint="read the log above")

    # -- where it is

    @property
    def pid(self) -> int | None:
        """The process id while it runs (also its process group id), else None."""
        return self._proc.pid if self._proc is not None and self.is_running() else None

    def is_running(self) -> bool:
        """True while the process runs (whether or not it is ready)."""
        return self._proc is not None and self._proc.poll() is None

    def log_since_start(self) -> str:
        """What the process logged since its latest start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_since_start(), lines)  # the last `lines` lines it logged since its latest start

    def record(self) -> ProcessRecord:
        """What the state file holds now."""
        pid = self.pid
        return ProcessRecord(
            self.name,
            pid,
            start_time(pid) if pid is not None else None,
            self.ports(),
            list(self._cmd) if pid is not None else [],
            str(self.log_path),
        )

    def save_state(self) -> None:
        """Write the state file (if this process has one)."""
        if self.state_path is not None:
            write_json(self.state_path, {**self.state_extra(), **dataclasses.asdict(self.record())})

    # -- start / stop

    def start(self, timeout_s: float = 60.0) -> ManagedProcess:
        """Start the process and return once it is ready; a no-op while it runs. Raises what :meth:`failure` gives
        (the process killed first); a port clash on auto-picked ports is retried once on other ports."""
        if self.is_running():
            return self
        attempts = 2 if self.auto_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(timeout_s)
                break
            except PortClashError as clash:
                if attempt == attempts:
                    raise
                _LOGGER.info("%s lost a port race (%s); trying again on other ports", self.name, clash.message)
                self.pick_ports()
        self.auto_ports = False  # from now on the ports are the process's: clients know them
        return self

    def _start_once(self, timeout_s: float) -> None:
        started = time.monotonic()
        self.spawn()
        self.wait_ready(timeout_s, started=started)

    def spawn(self) -> int:
        """Start the process without waiting for it to be ready (then :meth:`wait_ready`); its pid. Most callers
        want :meth:`start`; this pair lets a caller start several processes and wait for them together."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.prepare()
        cmd = self._cmd = self.command()
        _LOGGER.info("starting %s in %s", self.describe(), self.cwd)
        _LOGGER.debug("%s command: %s", self.name, cmd)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab" if self.append_log else "wb") as log:
            if self.append_log:
                log.write(f"\n===== scoring: starting {self.describe()} at {time.ctime()} =====\n".encode())
                log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.environment(),
                start_new_session=True,  # its own process group: a Ctrl-C in the terminal does not reach it
                preexec_fn=die_with_parent() if self.die_with_parent else None,
            )
        CHILDREN[self._proc.pid] = self._proc
        if self.die_with_parent:
            _KILL_AT_EXIT.add(self._proc.pid)
        else:
            _KILL_AT_EXIT.discard(self._proc.pid)
        self.save_state()
        return self._proc.pid

    def wait_ready(self, timeout_s: float, *, started: float | None = None) -> None:
        """Return once the spawned process is ready; otherwise kill it and raise what :meth:`failure` gives."""
        assert self._proc is not None
        try:
            self._wait_ready(timeout_s, time.monotonic() if started is None else started)
        except BaseException:
            kill_pid(self._proc.pid, 5.0)
            self.save_state()
            raise

    def _wait_ready(self, timeout_s: float, started: float) -> None:
        assert self._proc is not None
        deadline = started + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self._fail(f"exited with status {code} before it was ready", timed_out=False)
            if self.is_ready():
                _LOGGER.info(
                    "%s pid %d ready in %.1f s (log %s)",
                    self.describe(),
                    self._proc.pid,
                    time.monotonic() - started,
                    self.log_path,
                )
                return
            if time.monotonic() >= deadline:
                self._fail(f"was not ready within {timeout_s:g} s", timed_out=True)
            time.sleep(self.poll_s)

    def _fail(self, what: str, *, timed_out: bool) -> None:
        if self._proc is not None:
            kill_pid(self._proc.pid, 5.0)  # its last words are in the log once it is gone
        text = self.log_since_start()
        error = self.failure(what, text, timed_out=timed_out, clash=bool(_CLASH.search(text)))
        raise error

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop it by its pid (:func:`stop_pid`: SIGTERM, then SIGKILL to its group after `timeout_s`). Idempotent."""
        if self._proc is None:
            return
        pid = self._proc.pid
        if self.is_running():
            began = time.monotonic()
            stop_pid(pid, timeout_s, name=self.name)
            _LOGGER.info("%s pid %d stopped in %.1f s", self.name, pid, time.monotonic() - began)
        _reap(pid)
        self.save_state()

    def kill(self) -> None:
        """SIGKILL its process group at once (a crash: no shutdown). Idempotent."""
        if self._proc is None:
            return
        if self.is_running():
            _LOGGER.info("killing %s pid %d", self.name, self._proc.pid)
            kill_pid(self._proc.pid, 10.0)
        _reap(self._proc.pid)
        self.save_state()

    def restart(self, timeout_s: float = 60.0) -> ManagedProcess:
        """:meth:`stop` then :meth:`start`, on the same ports."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
