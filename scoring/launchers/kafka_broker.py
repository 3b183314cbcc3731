"""A real local Kafka broker: Apache Kafka's own broker from its Maven Central jars, one combined KRaft node
(broker and controller) on loopback, run as a plain ``java`` child process; plus (re-exported from
:mod:`scoring.launchers.kafka_client`) small confluent-kafka helpers that create topics, produce records and read a
topic back.

It serves tests and benchmarks on a laptop or CI machine (no Docker there). See ``/work/shared/KAFKA.md``:

- The jars (``org.apache.kafka:kafka_2.13`` and its runtime dependencies, plus an SLF4J binding so that the broker
  logs to a file) are resolved once with Maven into :func:`kafka_home` (``~/.cache/scoring/kafka-<version>``, or
  ``$SCORING_KAFKA_HOME``). Maven runs with a **private local repository** inside that folder, never ``~/.m2``:
  POMs Maven leaves in ``~/.m2`` without their jars make Spark's Ivy resolution (``spark.jars.packages``) fail later.
- A :class:`Broker` keeps its data, its ``server.properties``, its ports and its log in one folder, so that
  :meth:`Broker.stop` / :meth:`Broker.kill` and :meth:`Broker.start` again bring back the same broker, on the same
  ports, with its topics and records.
- A :class:`Broker` is a :class:`~scoring.launchers.process.ManagedProcess`: started, stopped and killed by pid, and
  it dies with the Python process that started it (``PR_SET_PDEATHSIG`` on Linux), so a crashed test run leaves no
  broker behind. The signal follows the *thread* that started it: start brokers from a thread that lives as
  long as they should (the main thread, in tests).

The helpers (:func:`create_topic`, :func:`produce`, :func:`consume_all`, :func:`wait_for_broker`) work against any
broker, this one or another; an unreachable broker is a `BackendUnavailableError` within seconds, not a hang.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from scoring.errors import ScoringError
from scoring.launchers.kafka_client import (
    ConsumedRecord,
    ProducedRecord,
    _answers,
    consume_all,
    create_topic,
    produce,
    topic_names,
    wait_for_broker,
)
from scoring.launchers.process import (
    LOOPBACK,
    ManagedProcess,
    NotReadyError,
    PortClashError,
    ProcessExitedError,
    die_with_parent,
    free_ports,
)
from scoring.launchers.process import tail as _proc_tail

__all__ = [
    "HEAP",
    "KAFKA_VERSION",
    "LOOPBACK",
    "Broker",
    "ConsumedRecord",
    "ProducedRecord",
    "consume_all",
    "create_topic",
    "find_java",
    "free_ports",
    "kafka_home",
    "produce",
    "resolve_broker_jars",
    "topic_names",
    "wait_for_broker",
]

_LOGGER = logging.getLogger(__name__)

_die_with_parent = die_with_parent  # the name other modules used before the launchers shared a base


KAFKA_VERSION = "4.1.1"
"""The Apache Kafka release of the broker (``org.apache.kafka:kafka_2.13``)."""

SCALA_BINARY_VERSION = "2.13"
SLF4J_VERSION = "1.7.36"
"""The ``slf4j-api`` that Kafka 4.1.1 brings; ``slf4j-simple`` of the same version is the logging binding added."""

HOME_ENV = "SCORING_KAFKA_HOME"
"""Environment variable that overrides :func:`kafka_home` (the folder holding ``lib/`` and Maven's private ``m2/``)."""

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
_MAVEN_HINT = "install Maven and Java 17+ (`apt-get install maven`), or set SCORING_KAFKA_HOME to a folder whose lib/ holds the broker jars"


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
    return _proc_tail(text, lines)


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


# --- the broker process -----------------------------------------------------------------------------------------------


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


class Broker(ManagedProcess):
    """One Kafka node (broker and KRaft controller in one ``java`` process) on ``127.0.0.1``.

    Everything lives in `data_dir`: ``server.properties``, the data (``kafka-logs/``), the log (``broker.log``) and
    ``broker.json`` (ports, cluster id, and the running pid and command). The ports are chosen once (free ones,
    unless given) and kept, also by a new `Broker` on the same folder, so clients reconnect after a restart; the data
    persists across restarts::

        with Broker(tmp / "kafka") as broker:        # started, stopped at the end
            create_topic(broker.bootstrap, "scores")
            broker.kill()                            # a crash
            broker.start()                           # same ports, same records
    """

    name = "Kafka broker"
    poll_s = _POLL_S

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        home: str | Path | None = None,
        heap: str = HEAP,
        properties: dict[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """`port` is the client (PLAINTEXT) port, `controller_port` the KRaft controller's; `home` the folder of the
        jars (:func:`kafka_home` by default); `properties` override or add ``server.properties`` entries."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.home = Path(home).expanduser() if home is not None else kafka_home()
        self.heap = heap
        self.extra_properties = dict(properties or {})
        saved = self._load_state()
        super().__init__(
            log_path=self.data_dir / LOG_NAME,
            cwd=self.data_dir,
            state_path=self.data_dir / _STATE_NAME,
            die_with_parent=die_with_parent,
            auto_ports=port is None and controller_port is None and saved is None,
        )
        if saved is not None and port is None and controller_port is None:
            port, controller_port = saved.port, saved.controller_port
        if port is None or controller_port is None:
            picked = iter(p for p in free_ports(3) if p not in (port, controller_port))
            port = port or next(picked)
            controller_port = controller_port or next(picked)
        self._state = _State(port, controller_port, saved.cluster_id if saved else _cluster_id())
        self._java: str | None = None
        self._lib: Path | None = None

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
    def log_dir(self) -> Path:
        """Kafka's ``log.dirs``: the topics' data and the KRaft metadata log."""
        return self.data_dir / "kafka-logs"

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

    def state_extra(self) -> dict[str, Any]:
        return dataclasses.asdict(self._state)

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

    # -- the managed process

    def ports(self) -> dict[str, int]:
        return {"port": self.port, "controller_port": self.controller_port}

    def describe(self) -> str:
        return f"Kafka broker {self.bootstrap} (controller port {self.controller_port}, folder {self.data_dir})"

    def pick_ports(self) -> None:
        port, controller_port = free_ports(2)
        self._state = dataclasses.replace(self._state, port=port, controller_port=controller_port)

    def prepare(self) -> None:
        """Resolve the jars and find Java (the first time), write ``server.properties`` and the state, format the
        storage (once)."""
        self._lib = self._lib or resolve_broker_jars(self.home)
        self._java = self._java or find_java()
        properties = self._write_properties()
        self.save_state()
        self._format(self._java, self._lib, properties)

    def command(self) -> list[str]:
        assert self._java is not None and self._lib is not None
        return [
            self._java,
            f"-Xmx{self.heap}",
            *self._java_options(),
            "-cp",
            self._classpath(self._lib),
            "kafka.Kafka",
            str(self.data_dir / "server.properties"),
        ]

    def is_ready(self) -> bool:
        return _answers(self.bootstrap, timeout_s=2.0)

    def failure(self, what: str, log_text: str, *, timed_out: bool, clash: bool) -> ScoringError:
        where, tail = self.describe(), _log_tail(log_text)
        if clash:
            return PortClashError(
                f"{where} could not bind its ports; it {what}. From its log {self.log_path}:\n{tail}",
                hint="pass free ports, or leave them unset (on a new folder) to pick free ones",
            )
        if timed_out:
            return NotReadyError(
                f"{where} {what}. From its log {self.log_path}:\n{tail}",
                hint="raise timeout_s on a slow machine, or read the log for what it was waiting on",
            )
        return ProcessExitedError(
            f"{where} {what}. From its log {self.log_path}:\n{tail}",
            hint=f"read the log above; a folder of another Kafka version or cluster cannot be reused: delete "
            f"{self.data_dir} to start afresh",
        )

    def start(self, timeout_s: float = 60.0) -> Broker:
        """Start the broker (resolving the jars and formatting the storage the first time) and return once it answers
        a metadata request. A no-op while it runs.

        Raises `BackendUnavailableError` when it does not answer within `timeout_s` or cannot bind its ports (auto
        chosen ports that turn out taken on a first start are replaced once), and `ScoringError` when the process
        exits; each with the tail of its log. A broker that failed to start is killed.
        """
        super().start(timeout_s)
        return self

    def restart(self, timeout_s: float = 60.0) -> Broker:
        """:meth:`stop` then :meth:`start`, on the same folder and ports."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> Broker:
        return self.start()
