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
    assert spec["restartPolicy"] == {"type": "Never"}  # Airflow retries (a new SparkApplication, the same run id)
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


# -- how a failed driver reaches Airflow: the statuses the operator sees (no cluster here) ----------------------------


def _driver_pod(exit_code: int | None, message: str | None = None, phase: str = "Failed"):
    """A driver pod as the Kubernetes client returns it after the driver container ended."""
    from kubernetes.client import (
        V1ContainerState,
        V1ContainerStateTerminated,
        V1ContainerStatus,
        V1ObjectMeta,
        V1Pod,
        V1PodStatus,
    )

    terminated = (
        None if exit_code is None else V1ContainerStateTerminated(exit_code=exit_code, message=message, reason="Error")
    )
    status = V1ContainerStatus(
        name=kubernetes.DRIVER_CONTAINER,
        image="scoring:1",
        image_id="",
        ready=False,
        restart_count=0,
        state=V1ContainerState(terminated=terminated),
    )
    return V1Pod(
        metadata=V1ObjectMeta(name="scoring-nightly-driver"),
        status=V1PodStatus(phase=phase, container_statuses=[status]),
    )


def _application(state: str, error_message: str | None) -> dict:
    """A SparkApplication as the custom-objects API returns it (spark-operator v1beta2 status)."""
    return {
        "apiVersion": kubernetes.API_VERSION,
        "kind": kubernetes.KIND,
        "metadata": {"name": "scoring-nightly"},
        "status": {"applicationState": {"state": state, "errorMessage": error_message}},
    }


def _record(exit_code: int, kind: str = "InputError", transient: bool = False) -> dict:
    return {"error": {"type": kind, "message": "m", "hint": "h", "transient": transient, "exit_code": exit_code}}


def test_a_terminal_driver_exit_is_not_retried_and_its_record_is_read_from_the_termination_message():
    from scoring.scheduling import score_failure

    record = _record(1, "InputError")
    outcome = kubernetes.driver_outcome(_driver_pod(1, kubernetes.termination_message(record)))
    assert outcome.exit_code == 1 and outcome.record == record and not outcome.retry_can_help
    assert outcome.source == "container spark-kubernetes-driver"
    failure = score_failure(outcome.exit_code, outcome.record)
    assert not failure.retry and "InputError: m" in failure.message()


def test_a_transient_driver_exit_is_retried():
    record = _record(75, "BackendUnavailableError", transient=True)
    outcome = kubernetes.driver_outcome(_driver_pod(75, kubernetes.termination_message(record)))
    assert outcome.exit_code == 75 and outcome.retry_can_help
    assert "exit code 75" in outcome.describe() and "BackendUnavailableError: m" in outcome.describe()


def test_without_the_pod_the_exit_code_comes_from_the_spark_application_status():
    failed = _application("FAILED", "driver container failed with ExitCode: 75, Reason: Error")
    outcome = kubernetes.driver_outcome(None, failed)
    assert outcome.exit_code == 75 and outcome.retry_can_help and outcome.record is None
    older = _application("FAILED", "driver pod failed with ExitCode: 2, Reason: Error")  # spark-operator < 2.0
    assert kubernetes.driver_outcome({"status": {}}, older).exit_code == 2


def test_a_driver_that_never_exited_is_retried():
    evicted = _driver_pod(None, phase="Failed")  # evicted or lost node: no terminated state
    outcome = kubernetes.driver_outcome(evicted, _application("FAILED", "driver container status missing"))
    assert outcome.exit_code is None and outcome.retry_can_help
    assert "driver container status missing" in outcome.source
    assert kubernetes.driver_outcome(None, None).exit_code is None


def test_a_plain_termination_message_is_not_an_error_record():
    outcome = kubernetes.driver_outcome(_driver_pod(137, "OOMKilled"))
    assert outcome.exit_code == 137 and outcome.record is None and not outcome.retry_can_help
    assert kubernetes.error_record_from_message('{"summary": 1}') is None


def test_the_termination_message_fits_what_kubernetes_keeps():
    record = {"error": {"type": "InputError", "message": "x" * 10_000, "hint": "y" * 3_000, "exit_code": 1}}
    text = kubernetes.termination_message(record)
    assert len(text.encode()) <= kubernetes.TERMINATION_MESSAGE_MAX_BYTES
    back = kubernetes.error_record_from_message(text)
    assert back["error"]["type"] == "InputError" and back["error"]["exit_code"] == 1
    assert back["error"]["message"].startswith("xxx") and back["error"]["message"].endswith("...")
    small = _record(2, "ConfigError")
    assert kubernetes.error_record_from_message(kubernetes.termination_message(small)) == small
