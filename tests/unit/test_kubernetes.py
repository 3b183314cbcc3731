"""The SparkApplication manifest rendered for a job config (no cluster: its shape, and that it is valid YAML)."""

from __future__ import annotations

from pathlib import Path

import yaml

from scoring import kubernetes
from scoring.adapters.spark import DEFAULTS, delta_package
from scoring.config import load_job_config

ROOT = Path(__file__).resolve().parents[2]
NIGHTLY = ROOT / "conf" / "jobs" / "nightly.yaml"


def _nightly(*overrides: str):
    return load_job_config(NIGHTLY, overrides)


def test_the_nightly_manifest_runs_spark_entry_from_the_image_with_the_delta_jars():
    manifest = kubernetes.render_manifest(_nightly(), "conf/jobs/nightly.yaml")
    assert manifest["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and manifest["kind"] == "SparkApplication"
    assert manifest["metadata"]["name"] == "scoring-nightly" and manifest["metadata"]["namespace"] == "default"
    spec = manifest["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["image"] == kubernetes.IMAGE_PLACEHOLDER
    assert spec["mainApplicationFile"] == "local:///opt/scoring/scoring/spark_entry.py"
    assert spec["arguments"] == ["/opt/scoring/conf/jobs/nightly.yaml"]
    assert spec["deps"]["packages"] == [delta_package()]
    assert spec["sparkConf"]["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert spec["sparkConf"]["spark.sql.catalog.spark_catalog"] == DEFAULTS["spark.sql.catalog.spark_catalog"]
    assert "spark.kubernetes.executor.podTemplateFile" not in spec["sparkConf"]  # embedded: no sidecar
    assert spec["restartPolicy"] == {"type": "Never"}  # Airflow retries, each try with its own run id
    assert spec["driver"]["serviceAccount"] == "spark"


def test_overrides_become_set_arguments_in_order():
    manifest = kubernetes.render_manifest(
        _nightly(),
        "conf/jobs/nightly.yaml",
        overrides=["input.where=ds = '{{ data_interval_start | ds }}'", "run_id=scoring__nightly__{{ run_id }}"],
    )
    assert manifest["spec"]["arguments"] == [
        "/opt/scoring/conf/jobs/nightly.yaml",
        "--set",
        "input.where=ds = '{{ data_interval_start | ds }}'",
        "--set",
        "run_id=scoring__nightly__{{ run_id }}",
    ]


def test_a_triton_job_references_the_sidecar_executor_pod_template():
    config = _nightly("runtime.backend=triton", "runtime.triton.url=127.0.0.1:8001", "schedule.namespace=scoring")
    manifest = kubernetes.render_manifest(config, "conf/jobs/nightly.yaml", image="registry.example/scoring:1.2")
    conf = manifest["spec"]["sparkConf"]
    assert conf["spark.kubernetes.executor.podTemplateFile"] == "/opt/scoring/sidecars/k8s/executor-pod-template.yaml"
    assert conf["spark.kubernetes.executor.podTemplateContainerName"] == "spark-kubernetes-executor"
    assert manifest["spec"]["image"] == "registry.example/scoring:1.2"
    assert manifest["metadata"]["namespace"] == "scoring"
    # the referenced template is the project's, and its executor container is the one named
    template = yaml.safe_load((ROOT / kubernetes.EXECUTOR_POD_TEMPLATE).read_text())
    assert template["spec"]["containers"][0]["name"] == kubernetes.EXECUTOR_CONTAINER


def test_the_job_spark_conf_is_kept_and_app_root_moves_every_path():
    config = _nightly("spark.conf={spark.executor.memory: 8g}")
    manifest = kubernetes.render_manifest(config, "jobs/nightly.yaml", app_root="/srv/app")
    assert manifest["spec"]["sparkConf"]["spark.executor.memory"] == "8g"
    assert manifest["spec"]["mainApplicationFile"] == "local:///srv/app/scoring/spark_entry.py"
    assert manifest["spec"]["arguments"] == ["/srv/app/jobs/nightly.yaml"]
    absolute = kubernetes.render_manifest(config, "/etc/scoring/nightly.yaml")
    assert absolute["spec"]["arguments"] == ["/etc/scoring/nightly.yaml"]


def test_the_manifest_dumps_to_yaml_that_parses_back_to_the_same_dict():
    config = _nightly("runtime.backend=triton")
    manifest = kubernetes.render_manifest(config, "conf/jobs/nightly.yaml", overrides=["run_id=a__{{ run_id }}"])
    text = kubernetes.to_yaml(manifest)
    assert text.startswith("apiVersion: sparkoperator.k8s.io/v1beta2\nkind: SparkApplication\n")
    assert yaml.safe_load(text) == manifest


def test_a_job_name_becomes_a_valid_kubernetes_name():
    config = _nightly("name=Churn_Scores.EU nightly")
    assert kubernetes.application_name(config) == "scoring-churn-scores-eu-nightly"
