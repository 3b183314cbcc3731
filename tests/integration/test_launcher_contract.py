"""One contract for every local launcher (scoring.launchers.process.ManagedProcess): the Redis server, the Kafka broker,
the Triton server and the Spark cluster's master and workers are held to the same promises by one set of tests.

Each launcher is a subclass of :class:`LauncherCase` (as ibis's ``BackendTest``); the tests are parametrised over the
cases. Real processes, no mocks. Every promise but one runs against Redis, Kafka and Triton; the cluster is slow to
start (two JVMs and a registration), so it keeps to the promises one start can show (it starts on loopback and
answers, stopping it leaves no process) plus the one that needs a parent of its own (it dies with its parent).
"""

from __future__ import annotations

import ipaddress
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scoring.errors import ScoringError, is_transient
from scoring.launchers import kafka_broker as kb
from scoring.launchers import redis_server as rs
from scoring.launchers import triton_server as ts
from scoring.launchers.process import (
    ManagedProcess,
    NotReadyError,
    PortClashError,
    ProcessExitedError,
    ProcessRecord,
    group_members,
)

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0

TRITON_CONFIG = textwrap.dedent(
    """\
    backend: "python"
    max_batch_size: 8
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """
)
TRITON_MODEL = textwrap.dedent(
    """\
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]
                )
                for r in requests
            ]
    """
)


def _repository(folder: Path) -> Path:
    (folder / "echo" / "1").mkdir(parents=True, exist_ok=True)
    (folder / "echo" / "config.pbtxt").write_text(TRITON_CONFIG)
    (folder / "echo" / "1" / "model.py").write_text(TRITON_MODEL)
    return folder


class LauncherCase:
    """How the contract makes and reaches one launcher's process; a subclass per launcher."""

    name = "launcher"
    port_role = "port"
    """The role (a key of ``ports()``) whose port the port-clash test takes before the start."""

    def make(self, folder: Path) -> ManagedProcess:
        """A process that is not started yet, on ports of its own choosing, dying with its parent."""
        raise NotImplementedError

    def child_script(self, folder: Path) -> str:
        """Python that starts one in `folder`, prints its pid and sleeps (the die-with-parent test's parent)."""
        return (
            f"import sys, time; from tests.integration.test_launcher_contract import CASES; "
            f"p = CASES[{self.name!r}].make(__import__('pathlib').Path({str(folder)!r})).start({START_TIMEOUT_S}); "
            "print(p.pid, flush=True); time.sleep(300)"
        )


class RedisCase(LauncherCase):
    name = "redis"

    def make(self, folder: Path) -> ManagedProcess:
        return rs.RedisServer(folder, binary=rs.resolve_redis_server())


class KafkaCase(LauncherCase):
    name = "kafka"

    def make(self, folder: Path) -> ManagedProcess:
        return kb.Broker(folder)


class TritonCase(LauncherCase):
    name = "triton"
    port_role = "http"

    def make(self, folder: Path) -> ManagedProcess:
        repo = _repository(folder / "repository")
        return ts.TritonProcess(
            ts.find_tritonserver(), repo.resolve(), folder / "work", (None, None, None), None, (), True
        )


CASES: dict[str, LauncherCase] = {case.name: case for case in (RedisCase(), KafkaCase(), TritonCase())}
ALL = sorted(CASES)


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a JVM's view of an IPv4 socket
    return (mapped or address).is_loopback


def _listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket process `pid` listens on."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def _cleanup(pid: int | None) -> None:
    if pid is not None and not _gone(pid, 0):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module", params=ALL)
def running(request, tmp_path_factory) -> Iterator[tuple[LauncherCase, ManagedProcess]]:
    """One started process per launcher for the module (the stop test, last, stops it)."""
    case = CASES[request.param]
    process = case.make(tmp_path_factory.mktemp(f"contract-{case.name}"))
    process.start(START_TIMEOUT_S)
    try:
        yield case, process
    finally:
        pid = process.pid
        process.stop()
        _cleanup(pid)


def test_it_starts_and_answers_its_readiness_check_on_loopback_only(running):
    case, process = running
    assert process.is_running() and process.is_ready()
    listening = _listening(process.pid)
    assert listening, f"{case.name} listens on nothing"
    assert all(_loopback(ip) for ip, _port in listening), listening
    assert set(process.ports().values()) - {0} <= {port for _ip, port in listening}


def test_restart_keeps_the_state_file_right(running):
    case, process = running
    before = ProcessRecord.load(process.state_path)
    assert before is not None and before.pid == process.pid and before.alive()
    assert before.ports == process.ports() and before.command
    old_pid = process.pid

    process.restart(START_TIMEOUT_S)

    after = ProcessRecord.load(process.state_path)
    assert after is not None and after.alive()
    assert after.pid == process.pid != old_pid
    assert after.ports == before.ports, "a restart keeps the ports clients know"
    assert after.command == before.command
    assert _gone(old_pid, 0)
    assert process.is_ready()


def test_stop_leaves_no_process_and_the_state_file_says_so(running):
    case, process = running
    pid = process.pid
    assert pid is not None
    process.stop()
    assert _gone(pid, 0), f"{case.name} pid {pid} outlived stop"
    assert not group_members(pid), f"{case.name} left processes in its group"
    record = ProcessRecord.load(process.state_path)
    assert record is not None and record.pid is None and not record.alive()
    process.stop()  # idempotent


@pytest.mark.parametrize("name", ALL)
def test_a_killed_child_is_reported_with_its_exit_status_and_log_tail(name, tmp_path):
    process = CASES[name].make(tmp_path / name)
    pid = process.spawn()
    try:
        deadline = time.monotonic() + 60
        while not process.log_since_start().strip() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ProcessExitedError) as caught:
            process.wait_ready(START_TIMEOUT_S)
        message = caught.value.message
        assert f"exited with status {-signal.SIGKILL}" in message
        assert str(process.log_path) in message
        last_line = [line for line in process.log_since_start().splitlines() if line.strip()][-1].rstrip()
        assert last_line in message, "the message quotes the log's tail"
        assert not process.is_running() and not group_members(pid)
    finally:
        _cleanup(pid)


@pytest.mark.parametrize("name", ALL)
def test_a_port_clash_at_start_is_retried_on_another_port(name, tmp_path):
    case = CASES[name]
    process = case.make(tmp_path / name)
    taken = process.ports()[case.port_role]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        process.start(START_TIMEOUT_S)
    pid = process.pid
    try:
        assert process.ports()[case.port_role] != taken
        assert process.is_ready()
        record = ProcessRecord.load(process.state_path)
        assert record is not None and record.pid == pid and record.ports == process.ports()
    finally:
        process.stop()
        _cleanup(pid)


@pytest.mark.parametrize("name", ALL)
def test_the_child_dies_with_its_parent(name, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", CASES[name].child_script(tmp_path / name)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    child = None
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}"
        child = int(line)
        assert psutil.pid_exists(child)

        os.kill(parent.pid, signal.SIGKILL)  # no atexit, no finally: only PR_SET_PDEATHSIG can end the child
        parent.wait(timeout=10)

        assert _gone(child, 15), f"{name} pid {child} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        _cleanup(child)


# --- the cluster: the promises one start can show ---------------------------------------------------------------------


def _cluster_pids(folder: Path) -> list[int]:
    from scoring.deploy.cluster import Cluster

    state = Cluster(folder).state()
    assert state is not None
    return [state.master_pid, *(w.pid for w in state.workers)]


def test_the_cluster_starts_on_loopback_answers_and_stop_leaves_no_process(tmp_path):
    from scoring.deploy.cluster import Cluster

    cluster = Cluster(tmp_path / "cluster", die_with_parent=True)
    cluster.up(1, timeout_s=START_TIMEOUT_S)
    try:
        state = cluster.state()
        assert state is not None and cluster.master_status(state) is not None
        assert cluster.alive_workers(state) == {f"127.0.0.1:{state.workers[0].port}"}
        pids = _cluster_pids(tmp_path / "cluster")
        for pid in pids:
            listening = _listening(pid)
            assert listening and all(_loopback(ip) for ip, _port in listening), (pid, listening)
        master = ProcessRecord.load(tmp_path / "cluster" / "master" / "master.json")
        assert master is not None and master.pid == state.master_pid and master.alive()
        everything = cluster.alive_processes(state)
    finally:
        left = cluster.down()
    assert left == []
    assert all(_gone(pid, 0) for pid in everything), [p for p in everything if not _gone(p, 0)]
    assert cluster.state() is None


def test_the_cluster_dies_with_its_parent(tmp_path):
    folder = tmp_path / "cluster"
    script = (
        "import time; from scoring.deploy.cluster import Cluster; "
        f"c = Cluster({str(folder)!r}, die_with_parent=True).up(1, timeout_s={START_TIMEOUT_S}); "
        "print('up', flush=True); time.sleep(300)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = parent.stdout.readline()
        assert line.strip() == "up", f"the parent printed {line!r}"
        pids = _cluster_pids(folder)
        assert all(psutil.pid_exists(pid) for pid in pids)

        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)

        assert all(_gone(pid, 20) for pid in pids), [p for p in pids if not _gone(p, 0)]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
        for pid in pids:
            _cleanup(pid)


@pytest.mark.parametrize("error_type", [ProcessExitedError, NotReadyError, PortClashError])
def test_launcher_errors_belong_to_the_one_hierarchy_and_pickle(error_type):
    error = error_type("redis-server 127.0.0.1:1 exited", hint="read the log")
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, ScoringError) and type(again) is error_type
    assert (again.message, again.hint, str(again)) == (error.message, error.hint, str(error))
    assert is_transient(again) == (error_type is not ProcessExitedError)
