"""The cluster's state folder, read by another process than the one that started it: what a job needs to run on it,
and what status and down make of processes that are gone. No process is started here."""

from __future__ import annotations

import json
import sys

import pytest

from scoring.deploy.cluster import STATE_NAME, Cluster, ClusterState, WorkerState
from scoring.errors import ScoringError

# pids far above any pid_max: no process has them
GONE = [4_194_304 + i for i in range(10)]


def _sidecar(pid: int, grpc: int) -> dict:
    return {
        "pid": pid,
        "host": "127.0.0.1",
        "http_port": grpc - 1,
        "grpc_port": grpc,
        "metrics_port": grpc + 1,
        "repository": "/repo",
        "workdir": "/nowhere",
        "log_path": "/nowhere/tritonserver.log",
        "owns_workdir": False,
    }


def _write(folder, *, sidecars: bool) -> ClusterState:
    workers = tuple(
        WorkerState(
            i,
            GONE[i + 1],
            20000 + i,
            21000 + i,
            1,
            "768m" if i else "1g",
            f"/w{i}/work",
            f"/w{i}/worker.log",
            _sidecar(GONE[i + 5], 30001 + 10 * i) if sidecars else None,
        )
        for i in range(2)
    )
    state = ClusterState(GONE[0], 7077, 8080, "/m/master.log", workers)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_NAME).write_text(json.dumps(state.to_json()))
    return state


def test_a_job_is_pointed_at_the_cluster_with_a_loopback_driver_and_this_python(tmp_path):
    _write(tmp_path, sidecars=False)
    sets = Cluster(tmp_path).run_overrides()
    assert sets[0] == "spark.master=spark://127.0.0.1:7077"
    conf = json.loads(sets[1].removeprefix("spark.conf="))
    assert conf["spark.driver.host"] == conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.executor.memory"] == "768m"  # fits the smallest worker
    assert conf["spark.cores.max"] == "2" and conf["spark.scheduler.minRegisteredResourcesRatio"] == "1.0"
    assert not any(" " in s for s in sets)  # a shell may split them: $(scoring cluster sets)
    assert len(sets) == 2


def test_with_sidecars_the_driver_probes_through_worker_0_s_sidecar(tmp_path):
    _write(tmp_path, sidecars=True)
    sets = Cluster(tmp_path).run_overrides()
    assert sets[2:] == ["runtime.triton.launch=external", "runtime.triton.url=127.0.0.1:30001"]


def test_status_of_a_cluster_whose_processes_are_gone_shows_them_down(tmp_path):
    _write(tmp_path, sidecars=True)
    status = Cluster(tmp_path).status()
    assert status["master_alive"] is False
    assert [w["alive"] for w in status["workers"]] == [False, False]
    assert [w["triton"]["ready"] for w in status["workers"]] == [False, False]
    assert Cluster(tmp_path).alive_processes() == []


def test_down_of_a_cluster_whose_processes_are_gone_signals_nobody_and_clears_the_state(tmp_path):
    _write(tmp_path, sidecars=True)
    assert Cluster(tmp_path).down() == []
    assert not (tmp_path / STATE_NAME).exists()
    assert Cluster(tmp_path).down() == []


def test_no_cluster_recorded_is_a_clear_error(tmp_path):
    with pytest.raises(ScoringError, match="no cluster recorded"):
        Cluster(tmp_path).run_overrides()
    assert Cluster(tmp_path).state() is None


def test_an_unreadable_state_is_a_clear_error(tmp_path):
    (tmp_path / STATE_NAME).write_text(json.dumps({"master_pid": 1}))
    with pytest.raises(ScoringError, match="unreadable"):
        Cluster(tmp_path).state()
