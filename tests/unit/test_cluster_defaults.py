"""Laptop sizes (shuffle partitions, Delta snapshot partitions) apply under a local master only; on a cluster Spark's
own defaults or the job's spark.conf decide. And a worker's predictor finds the sidecar beside it through the
environment, as a pod does through loopback."""

from __future__ import annotations

import pytest

from scoring.adapters import spark as glue
from scoring.adapters.triton import TRITON_HTTP_URL_ENV, TRITON_URL_ENV, TritonSpec
from scoring.config import build_job_config
from scoring.deploy import scheduling

LAPTOP_KEYS = {"spark.sql.shuffle.partitions", "spark.databricks.delta.snapshotPartitions"}
JOB = {
    "name": "t",
    "input": {"table": "/lake/in", "key": "id"},
    "model": {"uri": "models:/m@champion"},
    "output": {"table": "/lake/out"},
}


@pytest.mark.parametrize("master", [None, "local", "local[*]", "local[2]", "local[2,4]", " local[*] "])
def test_a_local_master_is_local(master):
    assert glue.is_local(master)
    assert glue.laptop_defaults(master) == glue.LAPTOP_DEFAULTS


@pytest.mark.parametrize(
    "master", ["spark://127.0.0.1:7077", "yarn", "k8s://https://api:6443", "local-cluster[2,1,1024]", "localhost"]
)
def test_no_laptop_default_reaches_a_cluster_master(master):
    assert not glue.is_local(master)
    assert glue.laptop_defaults(master) == {}


def test_the_job_s_own_setting_wins_over_a_laptop_default():
    chosen = glue.laptop_defaults("local[2]", {"spark.sql.shuffle.partitions": "1"})
    assert chosen == {"spark.databricks.delta.snapshotPartitions": "2"}


def test_the_defaults_for_every_run_hold_no_laptop_size():
    assert not (LAPTOP_KEYS & set(glue.DEFAULTS))


def _confs(command: list[str]) -> dict[str, str]:
    pairs = [command[i + 1] for i, arg in enumerate(command) if arg == "--conf"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_spark_submit_to_a_cluster_carries_no_laptop_size_and_to_local_carries_them():
    on_cluster = _confs(glue.spark_submit_command("job.yaml", [], "spark://127.0.0.1:7077"))
    local = _confs(glue.spark_submit_command("job.yaml", [], None))
    assert not (LAPTOP_KEYS & set(on_cluster))
    assert on_cluster["spark.sql.extensions"] == glue.DEFAULTS["spark.sql.extensions"]
    assert {k: local[k] for k in LAPTOP_KEYS} == glue.LAPTOP_DEFAULTS


def test_the_airflow_and_kubernetes_spark_conf_carry_no_laptop_size_unless_the_job_sets_one():
    from scoring.deploy import kubernetes

    config = build_job_config(JOB)
    assert not (LAPTOP_KEYS & set(scheduling.spark_conf(config)))
    assert not (LAPTOP_KEYS & set(kubernetes.spark_conf(config)))
    tuned = build_job_config({**JOB, "spark": {"conf": {"spark.sql.shuffle.partitions": 64}}})
    assert kubernetes.spark_conf(tuned)["spark.sql.shuffle.partitions"] == "64"


# -- sidecar discovery ---------------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self, monkeypatch):
        self.urls = []
        monkeypatch.setattr("scoring.adapters.triton.TritonPredictor", lambda spec: self.urls.append(spec.url) or spec)


def _spec(protocol="grpc"):
    return TritonSpec("models:/m/1", "m", "1", ("a",), url="driver-host:8001", protocol=protocol)


def test_a_worker_with_a_sidecar_variable_talks_to_its_own_sidecar(monkeypatch):
    recorder = _Recorder(monkeypatch)
    monkeypatch.setenv(TRITON_URL_ENV, "127.0.0.1:9101")
    monkeypatch.setenv(TRITON_HTTP_URL_ENV, "127.0.0.1:9100")
    spec = _spec()
    made = spec.create()
    assert recorder.urls == ["127.0.0.1:9101"]
    assert made.model_version == "1" and spec.url == "driver-host:8001"  # the cache key is the driver's spec
    _spec("http").create()
    assert recorder.urls[-1] == "127.0.0.1:9100"


def test_without_the_variable_the_configured_url_is_used(monkeypatch):
    recorder = _Recorder(monkeypatch)
    monkeypatch.delenv(TRITON_URL_ENV, raising=False)
    monkeypatch.setenv(TRITON_HTTP_URL_ENV, "127.0.0.1:9100")  # the other protocol's variable is not read
    _spec().create()
    assert recorder.urls == ["driver-host:8001"]
