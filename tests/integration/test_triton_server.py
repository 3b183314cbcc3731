"""The local Triton sidecar: a real ``tritonserver`` (the one bundled with nvidia-pytriton) serving a real Python-backend
model repository on loopback, queried with real tritonclient gRPC and HTTP clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scoring.errors import ModelError, ScoringError
from scoring.launchers import triton_server as ts

MODEL = "row_sum"

CONFIG_PBTXT = textwrap.dedent(
    """\
    backend: "python"
    max_batch_size: 1024
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
    dynamic_batching { }
    """
)

MODEL_PY = textwrap.dedent(
    """\
    import numpy as np
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                y = x.sum(axis=1, keepdims=True).astype(np.float32)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", y)]))
            return responses
    """
)

BROKEN_MODEL_PY = "import numpy as np\n\ndef execute(self requests):\n    return []\n"

START_TIMEOUT_S = 60.0


def add_model(repository: Path, name: str, model_py: str) -> None:
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "config.pbtxt").write_text(CONFIG_PBTXT)
    (repository / name / "1" / "model.py").write_text(model_py)


def process_gone(pid: int) -> bool:
    """Neither the process nor anything else in its process group runs; zombies (exited, not reaped) count as gone."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and (int(entry.name) == pid or int(pgrp) == pid):
            return False
    return True


def kill_leftover(pid: int) -> None:
    """Last-resort cleanup for a test that failed before stopping its server."""
    if not process_gone(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton-repo")
    add_model(repo, MODEL, MODEL_PY)
    return repo


@pytest.fixture(scope="module")
def server(repository) -> Iterator[ts.ServerHandle]:
    handle = ts.start_server(repository, ready_timeout_s=START_TIMEOUT_S)
    try:
        yield handle
    finally:
        ts.stop_server(handle)
        kill_leftover(handle.pid)


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(257, 4)).astype(np.float32)


def test_server_listens_on_loopback_only_and_reports_the_server_and_model_ready(server, repository):
    assert server.host == "127.0.0.1"
    assert server.repository == str(repository.resolve())
    assert server.grpc_url == f"127.0.0.1:{server.grpc_port}"
    assert server.http_url == f"127.0.0.1:{server.http_port}"
    assert ts.is_alive(server)
    assert ts.server_ready(server)
    assert ts.model_ready(server, MODEL)
    assert ts.model_ready(server, MODEL, "1")
    assert not ts.model_ready(server, MODEL, "2")
    assert not ts.model_ready(server, "no_such_model")
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        addresses = listening_addresses(port)
        assert addresses, f"nothing listens on port {port}"
        assert addresses <= LOOPBACK_HEX, f"port {port} listens beyond loopback: {addresses}"


def test_server_answers_a_grpc_inference_with_the_row_sums(server, rows):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url, channel_args=[("grpc.enable_http_proxy", 0)])
    try:
        infer_input = grpcclient.InferInput("INPUT0", list(rows.shape), "FP32")
        infer_input.set_data_from_numpy(rows)
        result = client.infer(MODEL, [infer_input], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    finally:
        client.close()
    got = result.as_numpy("OUTPUT0")
    assert got.shape == (len(rows), 1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[:, 0], rows.sum(axis=1), rtol=1e-6, atol=1e-6)


def test_server_answers_an_http_inference_with_binary_tensors_with_the_row_sums(server, rows):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        infer_input = httpclient.InferInput("INPUT0", list(rows.shape), "FP32")
        infer_input.set_data_from_numpy(rows, binary_data=True)
        output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
        result = client.infer(MODEL, [infer_input], outputs=[output])
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("OUTPUT0")[:, 0], rows.sum(axis=1), rtol=1e-6, atol=1e-6)


def test_stop_leaves_no_process_behind_removes_the_workdir_and_may_be_repeated(repository):
    handle = ts.start_server(repository, ready_timeout_s=START_TIMEOUT_S)
    try:
        assert Path(handle.log_path).is_file()
        assert (Path(handle.workdir) / "backends" / "python" / "triton_python_backend_stub").is_file()
        assert not process_gone(handle.pid)
        ts.stop_server(handle)
        assert process_gone(handle.pid)
        with pytest.raises(ProcessLookupError):
            os.kill(handle.pid, 0)
        assert not ts.is_alive(handle)
        assert not Path(handle.workdir).exists()
        ts.stop_server(handle)  # already stopped: nothing to do, no error
    finally:
        kill_leftover(handle.pid)


def test_stop_keeps_a_workdir_the_caller_gave_with_the_server_log(repository, tmp_path):
    workdir = tmp_path / "work"
    handle = ts.start_server(repository, workdir=workdir, ready_timeout_s=START_TIMEOUT_S)
    try:
        assert handle.workdir == str(workdir.resolve())
        assert not handle.owns_workdir
        ts.stop_server(handle)
        assert process_gone(handle.pid)
        log = Path(handle.log_path).read_text()
        assert f"successfully loaded '{MODEL}'" in log
    finally:
        kill_leftover(handle.pid)


def test_start_fails_with_a_model_error_naming_the_broken_model_with_log_lines_and_leaves_no_process(tmp_path):
    repo = tmp_path / "repo"
    add_model(repo, "broken_model", BROKEN_MODEL_PY)
    workdir = tmp_path / "work"
    before = set(ts._PROCESSES)
    with pytest.raises(ModelError) as excinfo:
        ts.start_server(repo, workdir=workdir, ready_timeout_s=30.0)
    message = str(excinfo.value)
    assert "'broken_model'" in message
    assert str(repo.resolve()) in message
    assert "SyntaxError" in message  # a line of the server's log
    assert "how to fix:" in message
    assert (workdir / ts.LOG_NAME).is_file(), "the log of a failed start is kept"
    assert str(workdir / ts.LOG_NAME) in message
    assert not (workdir / "backends").exists()
    started = set(ts._PROCESSES) - before
    assert not started, "the failed server is still tracked"
    leftovers = [p for p in _tritonservers() if p.startswith(str(repo.resolve()))]
    assert not leftovers, leftovers


def _tritonservers() -> list[str]:
    """The --model-repository of every tritonserver this user runs (to prove a failed start left none behind)."""
    repos = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if os.path.basename(argv[0]) == b"tritonserver" and not process_gone(int(entry.name)):
                repos += [a.decode().split("=", 1)[1] for a in argv if a.startswith(b"--model-repository=")]
        except (OSError, IndexError):
            continue
    return repos


def test_start_with_named_models_loads_only_those(tmp_path, rows):
    repo = tmp_path / "repo"
    add_model(repo, MODEL, MODEL_PY)
    add_model(repo, "broken_model", BROKEN_MODEL_PY)
    with ts.running_server(repo, models=[MODEL], ready_timeout_s=START_TIMEOUT_S) as handle:
        assert ts.model_ready(handle, MODEL)
        assert not ts.model_ready(handle, "broken_model")


def test_start_refuses_a_repository_that_does_not_exist(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        ts.start_server(tmp_path / "nowhere")


def test_find_tritonserver_returns_the_bundled_executable():
    binary = ts.find_tritonserver()
    assert binary.name == "tritonserver"
    assert os.access(binary, os.X_OK)


def test_state_round_trips_through_the_state_file(server, tmp_path):
    state_file = tmp_path / "nested" / "sidecar.json"
    ts.save_state(server, state_file)
    assert json.loads(state_file.read_text())["pid"] == server.pid
    loaded = ts.load_state(state_file)
    assert loaded == server
    assert ts.is_alive(loaded)
    ts.clear_state(state_file)
    assert ts.load_state(state_file) is None


def test_state_file_defaults_to_the_env_override(server, tmp_path, monkeypatch):
    monkeypatch.setenv(ts.STATE_FILE_ENV, str(tmp_path / "from-env.json"))
    assert ts.default_state_file() == tmp_path / "from-env.json"
    ts.save_state(server)
    assert ts.load_state() == server
    monkeypatch.delenv(ts.STATE_FILE_ENV)
    assert ts.default_state_file() == ts.DEFAULT_STATE_FILE


def test_a_corrupt_state_file_is_a_scoring_error_naming_it(tmp_path):
    state_file = tmp_path / "sidecar.json"
    state_file.write_text("{not json")
    with pytest.raises(ScoringError, match="sidecar.json"):
        ts.load_state(state_file)
    state_file.write_text(json.dumps({"pid": 1}))
    with pytest.raises(ScoringError, match="lacks"):
        ts.load_state(state_file)


def test_running_server_stops_the_server_even_when_the_body_raises(repository):
    seen: list[ts.ServerHandle] = []
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with ts.running_server(repository, ready_timeout_s=START_TIMEOUT_S) as handle:
                seen.append(handle)
                assert ts.server_ready(handle)
                raise RuntimeError("boom")
        assert process_gone(seen[0].pid)
        assert not Path(seen[0].workdir).exists()
    finally:
        for handle in seen:
            kill_leftover(handle.pid)


def test_a_server_started_by_another_process_is_stopped_from_its_state_file(repository, tmp_path):
    """The `scoring sidecar start` / `stop` shape: the starting process exits, a later one stops the server."""
    state_file = tmp_path / "sidecar.json"
    script = (
        "import pathlib, sys; from scoring.launchers import triton_server as ts; "
        "ts.save_state(ts.start_server(sys.argv[1], ready_timeout_s=60), pathlib.Path(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", script, str(repository), str(state_file)], check=True, timeout=120)
    handle = ts.load_state(state_file)
    assert handle is not None
    try:
        assert ts.is_alive(handle)
        assert ts.model_ready(handle, MODEL)
        ts.stop_server(handle)
        assert not ts.is_alive(handle)
        assert process_gone(handle.pid)
        assert not Path(handle.workdir).exists()
    finally:
        kill_leftover(handle.pid)


def test_the_rendered_sidecar_s_flags_and_probes_work_against_a_real_tritonserver(repository):
    """The Kubernetes sidecar (scoring.deploy.kubernetes) as rendered: every flag it passes is one tritonserver knows (but
    --allow-client-shm, newer than the server bundled here, which the renderer passes to 26.04+ images only), and its
    exec probes (bash's /dev/tcp, no curl) succeed against a ready server and fail where none listens."""
    from scoring.config import load_job_config
    from scoring.deploy import kubernetes

    demo = Path(__file__).resolve().parents[2] / "conf" / "jobs" / "demo-triton.yaml"
    config = load_job_config(demo, ["runtime.triton.shared_memory=system"])
    pinned = kubernetes.PinnedModel("churn", "1", "models:/churn/1")
    template = kubernetes.render(config, demo, model=pinned).application["spec"]["executor"]["template"]
    sidecar = {c["name"]: c for c in template["spec"]["initContainers"]}[kubernetes.TRITON_CONTAINER]
    flags = ts._supported_flags(str(ts.find_tritonserver()))
    rendered = {arg.split("=", 1)[0] for arg in sidecar["args"]}
    assert rendered - flags == {"--allow-client-shm"}

    managed = ("--model-repository", "--http-", "--grpc-", "--metrics-")  # start_server sets these for loopback
    extra = [arg for arg in sidecar["args"] if not arg.startswith(managed) and "allow-client-shm" not in arg]
    handle = ts.start_server(repository, ready_timeout_s=60, extra_args=extra)
    try:
        for probe in ("startupProbe", "livenessProbe"):
            command = [*sidecar[probe]["exec"]["command"]]
            command[-1] = command[-1].replace(f"/{kubernetes.TRITON_HTTP_PORT} ", f"/{handle.http_port} ")
            assert subprocess.run(command, timeout=10, check=False).returncode == 0, probe
        ts.stop_server(handle)
        assert subprocess.run(command, timeout=10, check=False, capture_output=True).returncode != 0
    finally:
        kill_leftover(handle.pid)


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every socket the process listens on; IPv4-mapped IPv6 addresses as IPv4."""
    import ipaddress

    import psutil

    found = set()
    for conn in psutil.Process(pid).net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN:
            address = ipaddress.ip_address(conn.laddr.ip)
            found.add((str(getattr(address, "ipv4_mapped", None) or address), conn.laddr.port))
    return found


def test_a_server_whose_metrics_address_cannot_be_confirmed_runs_with_metrics_off_not_on_every_interface(
    repository, monkeypatch, caplog
):
    """Fail closed: the real server, told by a `--help` without --metrics-address, starts with metrics disabled."""
    flags = ts._supported_flags(str(ts.find_tritonserver()))
    assert "--metrics-address" in flags  # the bundled server has it: we take it away
    monkeypatch.setattr(ts, "_supported_flags", lambda binary: flags - {"--metrics-address"})
    with caplog.at_level("WARNING", logger=ts.__name__):
        handle = ts.start_server(repository, ready_timeout_s=START_TIMEOUT_S)
    try:
        assert not handle.metrics_enabled and handle.metrics_url is None and handle.metrics_port == 0
        argv = Path(f"/proc/{handle.pid}/cmdline").read_bytes().decode().split("\0")
        assert "--allow-metrics=false" in argv
        assert _listening(handle.pid) == {(ts.LOOPBACK, handle.http_port), (ts.LOOPBACK, handle.grpc_port)}
        assert ts.model_ready(handle, MODEL)
        assert any("--allow-metrics=false" in r.getMessage() for r in caplog.records)
    finally:
        ts.stop_server(handle)
        kill_leftover(handle.pid)
