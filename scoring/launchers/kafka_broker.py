"""A real local Kafka broker: Apache Kafka's own broker from its Maven Central jars, one combined KRaft node
(broker and controller) on loopback, run as a plain ``java`` child process; plus small confluent-kafka helpers that
create topics, produce records and read a topic back.

It serves tests and benchmarks on a laptop or CI machine (no Docker there). See ``/work/shared/KAFKA.md``:

- The jars (``org.apache.kafka:kafka_2.13`` and its runtime dependencies, plus an SLF4J binding so that the broker
  logs to a file) are resolved once with Maven into :func:`kafka_home` (``~/.cache/scoring/kafka-<version>``, or
  ``$SCORING_KAFKA_HOME``). Maven runs with a **private local repository** inside that folder, never ``~/.m2``:
  POMs Maven leaves in ``~/.m2`` without their jars make Spark's Ivy resolution (``spark.jars.packages``) fail later.
- A :class:`Broker` keeps its data, its ``server.properties``, its ports and its log in one folder, so that
  :meth:`Broker.stop` / :meth:`Broker.kill` and :meth:`Broker.start` again bring back the same broker, on the same
  ports, with its topics and records.
- The broker dies with the Python process that started it (``PR_SET_PDEATHSIG`` on Linux), so a crashed test run
  leaves no broker behind. The signal follows the *thread* that started it: start brokers from a thread that lives as
  long as they should (the main thread, in tests).

The helpers (:func:`create_topic`, :func:`produce`, :func:`consume_all`, :func:`wait_for_broker`) work against any
broker, this one or another; an unreachable broker is a `BackendUnavailableError` within seconds, not a hang.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import ctypes.util
import dataclasses
import fcntl
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from scoring.errors import BackendUnavailableError, ScoringError
from scoring.launchers.processes import signal_and_wait

_LOGGER = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
"""The Apache Kafka release of the broker (``org.apache.kafka:kafka_2.13``)."""

SCALA_BINARY_VERSION = "2.13"
SLF4J_VERSION = "1.7.36"
"""The ``slf4j-api`` that Kafka 4.1.1 brings; ``slf4j-simple`` of the same version is the logging binding added."""

HOME_ENV = "SCORING_KAFKA_HOME"
"""Environment variable that overrides :func:`kafka_home` (the folder holding ``lib/`` and Maven's private ``m2/``)."""

LOOPBACK = "127.0.0.1"
"""The only address the broker binds to."""

LOG_NAME = "broker.log"
"""The broker's stdout and stderr (its own log, through ``slf4j-simple``), inside its data folder; appended to at each
start."""

HEAP = "512m"
"""The broker's ``-Xmx``: enough for tests and benchmarks on one machine."""

_MARKER = ".resolved"
_STATE_NAME = "broker.json"
_LOG_TAIL_LINES = 25
_POLL_S = 0.2
_MAVEN_TIMEOUT_S = 900.0
_PR_SET_PDEATHSIG = 1
_MAVEN_HINT = "install Maven and Java 17+ (`apt-get install maven`), or set SCORING_KAFKA_HOME to a folder whose lib/ holds the broker jars"

# The Popen objects of brokers this process started: their pids are signalled only while these say they still run
# (a reaped child's pid may belong to someone else), and an exiting interpreter kills those left running.
_PROCESSES: dict[int, subprocess.Popen[bytes]] = {}


# --- the broker's jars ------------------------------------------------------------------------------------------------


def kafka_home() -> Path:
    """``$SCORING_KAFKA_HOME`` if set, else ``~/.cache/scoring/kafka-<version>``.

    Deliberately not under ``$SCORING_CACHE_DIR``: tests point that at a temporary folder, and resolving the broker
    again in every test session would cost a Maven run each time.
    """
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "scoring" / f"kafka-{KAFKA_VERSION}"


def _pom() -> str:
    deps = [
        ("org.apache.kafka", f"kafka_{SCALA_BINARY_VERSION}", KAFKA_VERSION),
        ("org.slf4j", "slf4j-simple", SLF4J_VERSION),
    ]
    rows = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>scoring.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{rows}
  </dependencies>
</project>
"""


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) if kept else "(no output)"


_PROBLEM = re.compile(r"\] (ERROR|FATAL) |^Caused by: |^Exception in thread |^Error: ")


def _log_tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """What a start-up failure message shows of the broker's log: the errors it reported and their causes (each
    once), then its last lines. A failing broker ends with a long shutdown, so its last lines rarely say why."""
    problems: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if _PROBLEM.search(line) and line not in problems:
            problems.append(line)
    parts = []
    if problems:
        parts.append("errors reported:\n" + "\n".join(problems[-lines:]))
    parts.append("last lines:\n" + _tail(text, lines // 2 if problems else lines))
    return "\n".join(parts)


def _resolved(lib: Path) -> bool:
    return (lib / _MARKER).is_file()


def resolve_broker_jars(home: str | Path | None = None, *, timeout_s: float = _MAVEN_TIMEOUT_S) -> Path:
    """The folder of the broker's jars (``<home>/lib``), resolved with Maven the first time.

    Maven runs on a throw-away POM with a private local repository (``<home>/m2``). The jars land in a temporary
    folder that is renamed to ``lib/`` once complete, under a file lock, so concurrent callers resolve once and never
    see half a folder. Raises `ScoringError` when Maven is missing or fails (with the tail of its output).
    """
    home = Path(home).expanduser() if home is not None else kafka_home()
    lib = home / "lib"
    if _resolved(lib):
        return lib
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".resolve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _resolved(lib):  # another process resolved while this one waited
            return lib
        if lib.exists():  # left by something else than this function: not trusted
            shutil.rmtree(lib)
        _run_maven(home, lib, timeout_s)
    return lib


def _run_maven(home: Path, lib: Path, timeout_s: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ScoringError("cannot resolve the Kafka broker's jars: Maven (`mvn`) is not on PATH", hint=_MAVEN_HINT)
    started = time.monotonic()
    _LOGGER.info("resolving the Kafka %s broker jars with Maven into %s (once)", KAFKA_VERSION, lib)
    with tempfile.TemporaryDirectory(prefix=".resolve-", dir=home) as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(_pom())
        out = work / "lib"
        cmd = [
            mvn,
            "-q",
            "-B",
            f"-Dmaven.repo.local={home / 'm2'}",  # private: never ~/.m2 (see the module docstring)
            "dependency:copy-dependencies",
            f"-DoutputDirectory={out}",
            "-DincludeScope=runtime",
        ]
        try:
            done = subprocess.run(
                cmd, cwd=work, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as e:
            raise ScoringError(
                f"Maven did not resolve the Kafka {KAFKA_VERSION} broker jars within {timeout_s:g} s",
                hint="check that Maven Central is reachable, then try again",
            ) from e
        jars = sorted(p.name for p in out.glob("*.jar")) if out.is_dir() else []
        if done.returncode != 0 or not any(j.startswith(f"kafka_{SCALA_BINARY_VERSION}-") for j in jars):
            raise ScoringError(
                f"Maven could not resolve the Kafka {KAFKA_VERSION} broker jars (exit status {done.returncode}):\n"
                f"{_tail(done.stdout + done.stderr)}",
                hint="check that Maven Central is reachable (and any mirror in Maven's settings.xml); " + _MAVEN_HINT,
            )
        slf4j = [j for j in jars if j.startswith("slf4j-api-")]
        if slf4j != [f"slf4j-api-{SLF4J_VERSION}.jar"]:  # the binding must match the API, or the broker logs nothing
            _LOGGER.warning("Kafka's jars bring %s, not slf4j-api %s: the broker may not log", slf4j, SLF4J_VERSION)
        (out / _MARKER).write_text(json.dumps({"kafka": KAFKA_VERSION, "jars": jars}, indent=2) + "\n")
        os.replace(out, lib)
    _LOGGER.info("resolved %d Kafka broker jars in %.1f s", len(jars), time.monotonic() - started)


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` if ``JAVA_HOME`` is set, else ``java`` on PATH; a `ScoringError` if neither exists."""
    java_home = os.environ.get("JAVA_HOME")
    java = shutil.which("java", path=os.path.join(java_home, "bin") if java_home else None)
    if java is None:
        raise ScoringError(
            "cannot start the Kafka broker: no `java` found" + (f" in JAVA_HOME={java_home}" if java_home else ""),
            hint="install Java 17 or 21 (what Spark needs too) and set JAVA_HOME",
        )
    return java


# --- ports ----------------------------------------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free a moment ago, below the kernel's ephemeral range.

    A broker keeps its ports across restarts; a port from the ephemeral range could be taken, while the broker is
    down, by some client's outgoing connection. Falls back to ephemeral ports if none below the range is free.
    """
    low, _high = _ephemeral_range()
    rng = random.Random()
    ports: list[int] = []
    for _ in range(200):
        if len(ports) == count:
            return ports
        port = rng.randrange(10000, low) if low > 11000 else 0
        if port and port not in ports and _port_free(port):
            ports.append(port)
    while len(ports) < count:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in ports:
            ports.append(port)
    return ports


# --- the broker process -----------------------------------------------------------------------------------------------


def _die_with_parent() -> Any:
    """A ``preexec_fn`` that has the child killed when this process dies (Linux; a no-op elsewhere)."""
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
    """At interpreter exit: kill the brokers this process started and never stopped (PDEATHSIG covers a crash)."""
    for pid, proc in list(_PROCESSES.items()):
        if proc.poll() is None:
            _LOGGER.warning("killing Kafka broker pid %d, left running at exit", pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


atexit.register(_kill_leftovers)


def _cluster_id() -> str:
    """A Kafka ``Uuid`` as ``kafka.tools.StorageTool random-uuid`` prints it (URL-safe base64, no leading dash)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


@dataclasses.dataclass(frozen=True)
class _State:
    """What a broker's folder remembers in ``broker.json``: its ports and cluster id, kept across restarts."""

    port: int
    controller_port: int
    cluster_id: str


class Broker:
    """One Kafka node (broker and KRaft controller in one ``java`` process) on ``127.0.0.1``.

    Everything lives in `data_dir`: ``server.properties``, the data (``kafka-logs/``), the log (``broker.log``) and
    ``broker.json`` (ports and cluster id). The ports are chosen once (free ones, unless given) and kept, also by a
    new `Broker` on the same folder, so clients reconnect after a restart; the data persists across restarts::

        with Broker(tmp / "kafka") as broker:        # started, stopped at the end
            create_topic(broker.bootstrap, "scores")
            broker.kill()                            # a crash
            broker.start()                           # same ports, same records
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        home: str | Path | None = None,
        heap: str = HEAP,
        properties: dict[str, str] | None = None,
    ) -> None:
        """`port` is the client (PLAINTEXT) port, `controller_port` the KRaft controller's; `home` the folder of the
        jars (:func:`kafka_home` by default); `properties` override or add ``server.properties`` entries."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.home = Path(home).expanduser() if home is not None else kafka_home()
        self.heap = heap
        self.extra_properties = dict(properties or {})
        self._proc: subprocess.Popen[bytes] | None = None
        saved = self._load_state()
        self._auto_ports = port is None and controller_port is None and saved is None
        if saved is not None and port is None and controller_port is None:
            port, controller_port = saved.port, saved.controller_port
        if port is None or controller_port is None:
            picked = iter(p for p in free_ports(3) if p not in (port, controller_port))
            port = port or next(picked)
            controller_port = controller_port or next(picked)
        self._state = _State(port, controller_port, saved.cluster_id if saved else _cluster_id())

    # -- where it is

    @property
    def port(self) -> int:
        """The client (PLAINTEXT) port on loopback."""
        return self._state.port

    @property
    def controller_port(self) -> int:
        """The KRaft controller's port on loopback."""
        return self._state.controller_port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``, for ``bootstrap.servers`` / Spark's ``kafka.bootstrap.servers``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def cluster_id(self) -> str:
        """The KRaft cluster id the storage was formatted with (kept in ``broker.json``)."""
        return self._state.cluster_id

    @property
    def pid(self) -> int | None:
        """The ``java`` process id while it runs (also its process group id), else None."""
        return self._proc.pid if self.is_running() else None

    @property
    def log_path(self) -> Path:
        """The broker's own log (stdout and stderr), appended to at each start."""
        return self.data_dir / LOG_NAME

    @property
    def log_dir(self) -> Path:
        """Kafka's ``log.dirs``: the topics' data and the KRaft metadata log."""
        return self.data_dir / "kafka-logs"

    def is_running(self) -> bool:
        """True while the broker's process runs (whether or not it answers yet)."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"Broker({self.bootstrap}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    # -- files

    def _load_state(self) -> _State | None:
        path = self.data_dir / _STATE_NAME
        try:
            data = json.loads(path.read_text())
            return _State(int(data["port"]), int(data["controller_port"]), str(data["cluster_id"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise ScoringError(
                f"the Kafka broker state {path} is unreadable: {e}",
                hint=f"delete {self.data_dir} to start a new broker there, or pass another folder",
            ) from e

    def _save_state(self) -> None:
        path = self.data_dir / _STATE_NAME
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self._state), indent=2) + "\n")
        os.replace(tmp, path)

    def server_properties(self) -> dict[str, str]:
        """The broker's ``server.properties`` (see ``/work/shared/KAFKA.md``), with `properties` applied."""
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "auto.create.topics.enable": "true",
            # One node: every internal topic has one replica (the defaults of 3 would never be satisfied), and one
            # partition (the first consumer group or transaction then does not wait for 50 partitions to be created).
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Keep every record however old its timestamp: tests and benchmarks produce records stamped in the past.
            "log.retention.ms": "-1",
            # After a crash (kill), the controller holds the dead incarnation's registration until its session
            # expires (9 s by default) and refuses the new one (DUPLICATE_BROKER_REGISTRATION) until then.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
        }
        props.update(self.extra_properties)
        return props

    def _write_properties(self) -> Path:
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        return path

    def _classpath(self, lib: Path) -> str:
        return str(lib / "*")

    def _java_options(self) -> list[str]:
        return [
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd HH:mm:ss.SSS",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            # The full config dump at every start, hundreds of lines: kept out of the log.
            "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config.AbstractConfig=warn",
            f"-Dkafka.logs.dir={self.data_dir}",
        ]

    def _format(self, java: str, lib: Path, properties: Path) -> None:
        """Format the log folder once (``StorageTool format``); a folder that has ``meta.properties`` is kept."""
        if (self.log_dir / "meta.properties").is_file():
            return
        cmd = [
            java,
            "-Xmx256m",
            *self._java_options(),
            "-cp",
            self._classpath(lib),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(properties),
            "--ignore-formatted",
        ]
        _LOGGER.debug("formatting Kafka storage: %s", cmd)
        try:
            done = subprocess.run(
                cmd,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise ScoringError(f"formatting Kafka storage in {self.log_dir} took over 120 s") from e
        if done.returncode != 0:
            raise ScoringError(
                f"formatting Kafka storage in {self.log_dir} failed (exit status {done.returncode}):\n"
                f"{_tail(done.stdout + done.stderr)}",
                hint=f"delete {self.data_dir} to start afresh; a folder formatted by another Kafka version may differ",
            )

    # -- start / stop

    def start(self, timeout_s: float = 60.0) -> Broker:
        """Start the broker (resolving the jars and formatting the storage the first time) and return once it answers
        a metadata request. A no-op while it runs.

        Raises `BackendUnavailableError` when it does not answer within `timeout_s` or cannot bind its ports (auto
        chosen ports that turn out taken on a first start are replaced once), and `ScoringError` when the process
        exits; each with the tail of its log. A broker that failed to start is killed.
        """
        if self.is_running():
            return self
        lib = resolve_broker_jars(self.home)
        java = find_java()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 2 if self._auto_ports else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(java, lib, timeout_s)
                break
            except _PortClash as clash:
                if attempt == attempts:
                    raise clash.error from None
                _LOGGER.info("Kafka broker lost a port race (%s); trying again with new ports", clash.error.message)
                port, controller_port = free_ports(2)
                self._state = dataclasses.replace(self._state, port=port, controller_port=controller_port)
        self._auto_ports = False  # from now on the ports are the broker's: clients know them
        return self

    def _start_once(self, java: str, lib: Path, timeout_s: float) -> None:
        started = time.monotonic()
        properties = self._write_properties()
        self._save_state()
        self._format(java, lib, properties)
        cmd = [
            java,
            f"-Xmx{self.heap}",
            *self._java_options(),
            "-cp",
            self._classpath(lib),
            "kafka.Kafka",
            str(properties),
        ]
        _LOGGER.info("starting Kafka broker %s in %s", self.bootstrap, self.data_dir)
        _LOGGER.debug("Kafka broker command: %s", cmd)
        with open(self.log_path, "ab") as log:  # appended: the history of restarts stays readable
            log.write(f"\n===== scoring: starting Kafka broker on {self.bootstrap} at {time.ctime()} =====\n".encode())
            log.flush()
            log_offset = log.tell()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # its own process group: a Ctrl-C in the terminal does not reach it
                preexec_fn=_die_with_parent(),
            )
        _PROCESSES[self._proc.pid] = self._proc
        try:
            self._wait_ready(timeout_s, started, log_offset)
        except BaseException:
            self._terminate(signal.SIGKILL, 5.0)
            raise

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout_s: float, started: float, log_offset: int) -> None:
        assert self._proc is not None
        deadline = started + timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self._raise_start_failure(f"exited with status {code} before it answered", log_offset)
            if _answers(self.bootstrap, timeout_s=min(2.0, max(0.5, deadline - time.monotonic()))):
                _LOGGER.info(
                    "Kafka broker pid %d ready on %s in %.1f s (log %s)",
                    self._proc.pid,
                    self.bootstrap,
                    time.monotonic() - started,
                    self.log_path,
                )
                return
            if time.monotonic() >= deadline:
                self._raise_start_failure(f"did not answer within {timeout_s:g} s", log_offset, timed_out=True)
            time.sleep(_POLL_S)

    def _raise_start_failure(self, what: str, log_offset: int, *, timed_out: bool = False) -> None:
        text = self._log_since(log_offset)
        tail = _log_tail(text)
        where = f"Kafka broker {self.bootstrap} (controller port {self.controller_port}, folder {self.data_dir})"
        if "Address already in use" in text or "BindException" in text:
            error = BackendUnavailableError(
                f"{where} could not bind its ports; it {what}. From its log {self.log_path}:\n{tail}",
                hint="pass free ports, or leave them unset (on a new folder) to pick free ones",
            )
            raise _PortClash(error) if self._auto_ports else error
        if timed_out:
            raise BackendUnavailableError(
                f"{where} {what}. From its log {self.log_path}:\n{tail}",
                hint="raise timeout_s on a slow machine, or read the log for what it was waiting on",
            )
        raise ScoringError(
            f"{where} {what}. From its log {self.log_path}:\n{tail}",
            hint=f"read the log above; a folder of another Kafka version or cluster cannot be reused: delete "
            f"{self.data_dir} to start afresh",
        )

    def _terminate(self, sig: signal.Signals, timeout_s: float) -> bool:
        """Send `sig` to the broker, wait up to `timeout_s` for it to exit; True when it did (see
        :func:`scoring.launchers.processes.signal_and_wait`)."""
        stopped = signal_and_wait(self._proc, sig, timeout_s)
        if stopped and self._proc is not None:
            _PROCESSES.pop(self._proc.pid, None)
        return stopped

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker by its pid: SIGTERM (a controlled shutdown), then SIGKILL after `timeout_s`. Idempotent."""
        if not self.is_running():
            return
        assert self._proc is not None
        pid = self._proc.pid
        began = time.monotonic()
        if not self._terminate(signal.SIGTERM, timeout_s):
            _LOGGER.warning("Kafka broker pid %d did not stop within %g s of SIGTERM; killing it", pid, timeout_s)
            self._terminate(signal.SIGKILL, 10.0)
        _LOGGER.info("Kafka broker pid %d stopped in %.1f s", pid, time.monotonic() - began)

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash: no controlled shutdown, no flush). Idempotent."""
        if not self.is_running():
            return
        assert self._proc is not None
        _LOGGER.info("killing Kafka broker pid %d", self._proc.pid)
        self._terminate(signal.SIGKILL, 10.0)

    def restart(self, timeout_s: float = 60.0) -> Broker:
        """:meth:`stop` then :meth:`start`, on the same folder and ports."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _PortClash(Exception):
    """Internal: the broker could not bind a port; carries the error to raise if no retry is left."""

    def __init__(self, error: BackendUnavailableError) -> None:
        super().__init__(error.message)
        self.error = error


# --- clients (confluent-kafka) ----------------------------------------------------------------------------------------


class _QuietLogger:
    """librdkafka's own log lines (connection refused while a broker starts, ...) go to DEBUG, not to stderr."""

    def log(self, level: int, msg: str, *args: object) -> None:
        _LOGGER.debug("librdkafka: %s", msg % args if args else msg)


def _client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": _QuietLogger(), **extra}


def _admin(bootstrap: str, timeout_s: float) -> Any:
    from confluent_kafka.admin import AdminClient

    ms = max(1, int(timeout_s * 1000))
    return AdminClient(_client_config(bootstrap, **{"socket.connection.setup.timeout.ms": max(1000, ms)}))


def _answers(bootstrap: str, timeout_s: float) -> bool:
    from confluent_kafka import KafkaException

    try:
        _admin(bootstrap, timeout_s).list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


def _unreachable(bootstrap: str, timeout_s: float, cause: object) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"Kafka broker at {bootstrap} did not answer within {timeout_s:g} s: {cause}",
        hint="start the broker (scoring.launchers.kafka_broker.Broker, or the kafka_broker test fixture), or check "
        "the bootstrap address (host:port)",
    )


def wait_for_broker(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Return once the broker(s) at `bootstrap` answer a metadata request; `BackendUnavailableError` after
    `timeout_s`."""
    from confluent_kafka import KafkaException

    try:
        _admin(bootstrap, timeout_s).list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise _unreachable(bootstrap, timeout_s, e.args[0] if e.args else e) from e


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    config: dict[str, str] | None = None,
    exists_ok: bool = False,
    timeout_s: float = 30.0,
) -> None:
    """Create topic `name` (replication factor 1) and return once every partition has a leader.

    Raises `BackendUnavailableError` when the broker does not answer, `ScoringError` when the topic exists (unless
    `exists_ok`) or the broker refuses it.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    wait_for_broker(bootstrap, timeout_s=min(timeout_s, 5.0))
    admin = _admin(bootstrap, timeout_s)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config or {}))],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    try:
        futures[name].result(timeout=timeout_s)
    except KafkaException as e:
        error = e.args[0] if e.args else None
        if not (exists_ok and isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise ScoringError(
                f"Kafka broker {bootstrap} did not create topic {name!r} ({partitions} partitions): {error or e}",
                hint="pass exists_ok=True to reuse an existing topic, or choose another name",
            ) from e
    _wait_for_topic(admin, bootstrap, name, timeout_s)


def _wait_for_topic(admin: Any, bootstrap: str, name: str, timeout_s: float) -> int:
    """Wait until `name` shows in the metadata with a leader for every partition; its partition count."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # All topics: a metadata request naming a topic may create it (auto.create.topics.enable).
            topics = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic()))).topics
            topic = topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and topic.partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                return len(topic.partitions)
        except KafkaException:
            pass
        if time.monotonic() >= deadline:
            raise BackendUnavailableError(
                f"topic {name!r} on Kafka broker {bootstrap} had no leader for every partition within {timeout_s:g} s"
            )
        time.sleep(0.05)


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


ProducedRecord = tuple[bytes | str | None, bytes | str] | tuple[bytes | str | None, bytes | str, int | None]
"""What :func:`produce` takes: ``(key, value)`` or ``(key, value, timestamp_ms)``; str is encoded as UTF-8."""


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[ProducedRecord],
    *,
    partition: int | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Produce `records` to `topic` (``acks=all``), flush, and return how many were delivered.

    A timestamp of None lets the producer stamp the record. `partition` pins every record to one partition; by
    default the key decides (records without a key are spread). Raises `BackendUnavailableError` when the broker does
    not answer or delivery does not finish within `timeout_s`, `ScoringError` when the broker refuses a record.
    """
    from confluent_kafka import KafkaError, Producer

    wait_for_broker(bootstrap, timeout_s=min(timeout_s, 5.0))
    ms = max(1000, int(timeout_s * 1000))
    producer = Producer(
        _client_config(bootstrap, **{"acks": "all", "linger.ms": 5, "message.timeout.ms": ms, "request.timeout.ms": ms})
    )
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            errors.append(error)

    count = 0
    for record in records:
        key, value = record[0], record[1]
        timestamp = record[2] if len(record) > 2 else None
        kwargs: dict[str, Any] = {"key": _as_bytes(key), "value": _as_bytes(value), "on_delivery": delivered}
        if timestamp is not None:
            kwargs["timestamp"] = int(timestamp)
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        count += 1
        producer.poll(0)
    left = producer.flush(timeout_s)
    if errors:
        first = errors[0]
        cls = (
            BackendUnavailableError if first.retriable() or first.code() == KafkaError._MSG_TIMED_OUT else ScoringError
        )
        raise cls(
            f"Kafka broker {bootstrap} did not take {len(errors)} of {count} records for topic {topic!r}: {first}",
            hint="read the broker's log; check the topic exists (or auto-creation is on) and the records' sizes",
        )
    if left:
        raise BackendUnavailableError(
            f"{left} of {count} records for topic {topic!r} were not delivered to Kafka broker {bootstrap} within "
            f"{timeout_s:g} s",
            hint="the broker may be down or overloaded; read its log, or raise timeout_s",
        )
    return count


class ConsumedRecord(NamedTuple):
    """One record read back by :func:`consume_all`."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp_ms: int
    """The record's timestamp (producer's create time, or the broker's log-append time), in ms since the epoch."""


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 1.0,
    isolation_level: str = "read_committed",
) -> list[ConsumedRecord]:
    """Read `topic` from its earliest offsets, sorted by (partition, offset).

    With `expect`, reads until that many records arrived (it stops there: call again without `expect` to see whether
    more follow) or `timeout_s` passed, waiting for the topic to appear if it does not exist yet. Without, reads
    until every partition's end and `idle_s` without a new record, or `timeout_s`; a missing topic gives ``[]``.
    Partitions are assigned directly (no consumer group join, nothing committed). Raises `BackendUnavailableError`
    when the broker does not answer.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    deadline = time.monotonic() + timeout_s
    wait_for_broker(bootstrap, timeout_s=min(timeout_s, 5.0))
    admin = _admin(bootstrap, 5.0)
    partitions = _partitions(admin, topic)
    while not partitions:
        if expect is None or time.monotonic() >= deadline:
            return []
        time.sleep(0.1)
        partitions = _partitions(admin, topic)

    consumer = Consumer(
        _client_config(
            bootstrap,
            **{
                "group.id": f"scoring-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": isolation_level,
            },
        )
    )
    records: list[ConsumedRecord] = []
    at_end: set[int] = set()
    last_new = time.monotonic()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        while time.monotonic() < deadline:
            if expect is not None and len(records) >= expect:
                break
            if expect is None and at_end >= set(partitions) and time.monotonic() - last_new >= idle_s:
                break
            for message in consumer.consume(num_messages=10_000, timeout=0.2):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(message.partition())
                        continue
                    if error.fatal() or not error.retriable():
                        raise ScoringError(f"reading topic {topic!r} from Kafka broker {bootstrap} failed: {error}")
                    _LOGGER.debug("reading %s: %s", topic, error)
                    continue
                at_end.discard(message.partition())
                last_new = time.monotonic()
                _ts_type, ts = message.timestamp()
                records.append(
                    ConsumedRecord(message.key(), message.value(), message.partition(), message.offset(), ts)
                )
    finally:
        consumer.close()
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def _partitions(admin: Any, topic: str) -> list[int]:
    """The partition ids of `topic`, or [] if it does not exist (yet)."""
    from confluent_kafka import KafkaException

    try:
        # All topics: a metadata request naming the topic would create it where auto.create.topics.enable is on.
        meta = admin.list_topics(timeout=5.0).topics.get(topic)
    except KafkaException:
        return []
    if meta is None or meta.error is not None:
        return []
    return sorted(meta.partitions)


def topic_names(bootstrap: str, timeout_s: float = 5.0) -> Sequence[str]:
    """The broker's topics (internal ones, starting with ``__``, left out)."""
    from confluent_kafka import KafkaException

    try:
        topics = _admin(bootstrap, timeout_s).list_topics(timeout=timeout_s).topics
    except KafkaException as e:
        raise _unreachable(bootstrap, timeout_s, e.args[0] if e.args else e) from e
    return sorted(t for t in topics if not t.startswith("__"))
