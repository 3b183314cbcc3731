"""The job on a real Spark standalone cluster on loopback: a master and two workers (one core each), each worker with
its own Triton sidecar (scoring.deploy.cluster). One cluster for the module; every run is a real `scoring run` driver process
whose master is the cluster's; tables are read back with delta-rs. Faults are real: an executor JVM SIGKILLed while it
runs a task, a worker's sidecar SIGKILLed mid-job. At the end, nothing the cluster started is left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from scoring import columns
from scoring.deploy.cluster import TRITON_URL_ENV, Cluster, executor_pids, export_for_sidecars, python_worker_pids
from scoring.errors import EXIT_TRANSIENT
from tests.integration.conftest import delta_version, features_of, read_delta

pytest_plugins = ["tests.integration.triton_fixtures"]  # champion

KEY = "customer_id"
RUN_TIMEOUT_S = 240
# Spark's cluster sizes (200 shuffle partitions, 50 Delta snapshot partitions: no laptop default reaches a cluster
# master) are for a real cluster; a job on two one-core workers sizes itself, as a job's spark.conf would.
SIZES = {"spark.sql.shuffle.partitions": "2", "spark.databricks.delta.snapshotPartitions": "2"}
# Columns that differ between two runs of the same job by design.
PER_RUN = {columns.SCORING_RUN_ID, columns.SCORED_AT}


def _triton_sections(url: str, **triton) -> dict:
    return {
        "runtime": {"backend": "triton", "triton": {"launch": "external", "url": url, "target": "python", **triton}}
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, lake):
    """Two one-core workers, each with its own sidecar serving the champion (exported from a job config, as
    `scoring cluster up --triton CONFIG` does)."""
    folder = tmp_path_factory.mktemp("cluster")
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump(lake.job("unused", **_triton_sections("127.0.0.1:1"))))
    repository, models = export_for_sidecars(config, folder / "repository")
    cluster = Cluster(folder / "state", die_with_parent=True)
    cluster.up(2, triton_repository=repository, triton_models=models)
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def seen_pids() -> dict[int, int | None]:
    """Every cluster process a test saw (pid -> start time): none of them may outlive `down`."""
    return {}


def _note(seen_pids, cluster) -> None:
    from scoring.deploy.cluster import _started

    for pid in cluster.alive_processes():
        seen_pids.setdefault(pid, _started(pid))


def _config(lake, cluster, tmp_path, output: str, **sections) -> str:
    conf = {**cluster.spark_conf(), **SIZES}
    master = conf.pop("spark.master")
    tree = lake.job(output, spark={"master": master, "conf": conf}, **sections)
    tree["output"]["table"] = str(tmp_path / output)
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _driver(config: str, *sets: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCORING_FAULT", "SCORING_TRITON"))}
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "run", config, "--json", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, dict | None, str]:
    out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    summary = json.loads(out[out.index("{") :]) if proc.returncode == 0 else None
    return proc.returncode, summary, err


def _run(config: str, *sets: str) -> dict:
    code, summary, err = _finish(_driver(config, *sets))
    assert code == 0, err[-3000:]
    return summary


def _wait_for(what, condition, proc, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout_s} s")


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(KEY, "ascending")])


def _assert_complete_without_duplicates(table: pa.Table, lake) -> None:
    assert table.num_rows == lake.table.num_rows
    assert pc.count_distinct(table.column(KEY)).as_py() == lake.table.num_rows
    assert sorted(table.column(KEY).to_pylist()) == sorted(lake.table.column(KEY).to_pylist())


def _own_predictions(lake) -> np.ndarray:
    return lake.onnx_source_model.predict_proba(features_of(_sorted(lake.table)))


def test_the_cluster_has_two_workers_each_with_one_core_and_its_own_sidecar(cluster, seen_pids):
    status = cluster.status()
    assert status["master_alive"] and status["master"].startswith("spark://127.0.0.1:")
    assert [w["alive"] for w in status["workers"]] == [True, True]
    assert [w["cores"] for w in status["workers"]] == [1, 1]
    sidecars = [w["triton"] for w in status["workers"]]
    assert all(s["ready"] for s in sidecars)
    assert len({s["grpc"] for s in sidecars}) == 2 and len({s["pid"] for s in sidecars}) == 2
    # status reads the state folder: another process (a new Cluster on the same folder) sees the same cluster
    assert Cluster(cluster.state_dir).status()["workers"] == status["workers"]
    _note(seen_pids, cluster)


@pytest.fixture(scope="module")
def killed_executor_run(cluster, lake, tmp_path_factory, seen_pids):
    """A job with the embedded runtime whose worker-0 executor JVM is SIGKILLed while it runs a scoring task: the
    driver's exit code, summary and stderr, the killed pid, the running Python worker's environment, the output."""
    tmp_path = tmp_path_factory.mktemp("killed_executor")
    worker = cluster.state().workers[0]
    proc = _driver(_config(lake, cluster, tmp_path, "killed_executor_out"))
    try:
        # A Python worker under the executor means a scoring task runs there now.
        python = _wait_for("Python worker on worker 0", lambda: python_worker_pids(worker), proc)
        executors = executor_pids(worker)
        assert len(executors) == 1, executors
        environ = dict(
            item.split(b"=", 1) for item in Path(f"/proc/{python[0]}/environ").read_bytes().split(b"\0") if b"=" in item
        )
        _note(seen_pids, cluster)
        os.kill(executors[0], signal.SIGKILL)
        code, summary, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, summary, err, executors[0], environ, tmp_path / "killed_executor_out"


def test_an_executor_killed_mid_job_has_its_tasks_retried_and_the_output_is_complete(
    cluster, lake, killed_executor_run
):
    code, summary, err, killed, _environ, output = killed_executor_run
    assert code == 0, err[-3000:]
    assert summary["rows_written"] == lake.table.num_rows
    out = _sorted(read_delta(output))
    _assert_complete_without_duplicates(out, lake)
    probabilities = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probabilities, _own_predictions(lake), atol=1e-5)
    assert killed not in executor_pids(cluster.state().workers[0])


def test_python_workers_inherit_their_worker_s_environment_and_know_the_sidecar_beside_them(
    cluster, killed_executor_run
):
    environ = killed_executor_run[4]
    assert environ[TRITON_URL_ENV.encode()].decode() == cluster.state().workers[0].sidecar.grpc_url


def test_the_model_s_files_reach_each_executor_through_spark(cluster, killed_executor_run):
    code, summary, *_ = killed_executor_run
    assert code == 0
    stem = summary["model_uri"].removeprefix("models:/").replace("/", "-")
    for worker in cluster.state().workers:
        # <work>/<app-id>/<executor-id>/<archive>/MLmodel: fetched from the driver and unpacked by the executor
        shipped = sorted(Path(worker.work_dir).glob("*/*/*.zip/MLmodel"))
        assert shipped, f"no model archive under {worker.work_dir}"
        assert all(p.parent.name.startswith(f"{stem}-") for p in shipped), shipped


def _inferences(handle, model: str) -> int:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(handle.grpc_url)
    try:
        stats = client.get_inference_statistics(model, as_json=True)
    finally:
        client.close()
    return sum(int(m.get("inference_count", 0)) for m in stats.get("model_stats", []))


@pytest.fixture(scope="module")
def triton_run(cluster, lake, tmp_path_factory, champion, seen_pids):
    """One job on the cluster through the workers' sidecars: its summary, output folder, and the inferences each
    sidecar served during it."""
    from scoring.adapters.triton_export import triton_model_name

    model = triton_model_name(champion)
    first, second = (w.sidecar for w in cluster.state().workers)
    before = [_inferences(first, model), _inferences(second, model)]
    tmp_path = tmp_path_factory.mktemp("triton_run")
    # The driver probes through worker 0's sidecar (runtime.triton.url); the executors must each use their own.
    summary = _run(_config(lake, cluster, tmp_path, "triton_out", **_triton_sections(first.grpc_url)))
    _note(seen_pids, cluster)
    served = [_inferences(first, model) - before[0], _inferences(second, model) - before[1]]
    return summary, tmp_path / "triton_out", served


def test_a_job_on_the_cluster_gives_the_same_rows_as_the_local_run(spark, lake, triton_run, tmp_path):
    from scoring import build_job_config, run

    summary, output, _served = triton_run
    local = run(build_job_config(lake.job("local_out", output={"table": str(tmp_path / "local_out")})), spark=spark)
    # the same job: on the cluster through the workers' sidecars, on the laptop embedded in the Python workers
    assert summary["rows_written"] == local.rows_written == lake.table.num_rows
    assert summary["model_uri"] == local.model_uri and summary["input_version"] == local.input_version
    on_cluster, on_laptop = _sorted(read_delta(output)), _sorted(read_delta(tmp_path / "local_out"))
    _assert_complete_without_duplicates(on_cluster, lake)
    keep = [n for n in on_cluster.schema.names if n not in PER_RUN]
    assert on_cluster.select(keep).equals(on_laptop.select(keep))
    probabilities = np.stack(on_cluster.column("probabilities").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(probabilities, _own_predictions(lake), atol=1e-5)


def test_each_executor_scores_through_the_sidecar_of_its_own_worker(lake, triton_run):
    _summary, _output, served = triton_run
    probe_rows = 16
    assert served[1] > 0, served  # only worker 1's executor talks to worker 1's sidecar
    assert served[0] > probe_rows, served  # worker 0's executor scored rows there beyond the driver's probe
    assert sum(served) == lake.table.num_rows + probe_rows, served  # every row once (no task was retried)


def test_a_sidecar_killed_mid_job_is_retried_or_fails_cleanly_with_nothing_half_committed(
    cluster, lake, tmp_path, seen_pids
):
    first, second = cluster.state().workers
    output = tmp_path / "sidecar_killed_out"
    sections = _triton_sections(first.sidecar.grpc_url, timeout_s=5, max_retries=1)
    proc = _driver(_config(lake, cluster, tmp_path, "sidecar_killed_out", **sections))
    try:
        _wait_for("Python worker on worker 1", lambda: python_worker_pids(second), proc)
        _note(seen_pids, cluster)
        os.killpg(second.sidecar.pid, signal.SIGKILL)  # the server and its Python stubs
        code, summary, err = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    if code == 0:  # Spark retried the failed tasks on worker 0, whose sidecar is alive
        out = _sorted(read_delta(output))
        _assert_complete_without_duplicates(out, lake)
        probabilities = np.stack(out.column("probabilities").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(probabilities, _own_predictions(lake), atol=1e-5)
        assert summary["rows_written"] == lake.table.num_rows
    else:  # every attempt landed on worker 1: a transient failure, and no commit at all
        assert code == EXIT_TRANSIENT, err[-3000:]
        assert delta_version(output) is None
        assert "Triton" in err


def test_down_stops_every_process_the_cluster_started_by_pid(cluster, seen_pids):
    from scoring.deploy.cluster import _started

    _note(seen_pids, cluster)
    assert len(seen_pids) >= 5  # master, two workers, at least one sidecar
    assert cluster.down() == []
    assert cluster.state() is None
    left = [pid for pid, started in seen_pids.items() if started is not None and _started(pid) == started]
    assert left == []
    assert cluster.down() == []  # idempotent
