"""A SparkApplication manifest (Kubeflow spark-operator, ``sparkoperator.k8s.io/v1beta2``) for a job config.

The manifest runs the same entry point as ``spark-submit`` (:mod:`scoring.spark_entry`) from an image that holds this
project at :data:`APP_ROOT` (``conf/``, ``sidecars/`` and the ``scoring`` package installed with ``pip install -e``),
with the Delta jars as ``deps.packages`` and the Delta settings in ``sparkConf``. With ``runtime.backend: triton`` the
executors get the Triton sidecar pod template (``sidecars/k8s/executor-pod-template.yaml``).

    manifest = render_manifest(load_job_config("conf/jobs/nightly.yaml"), "conf/jobs/nightly.yaml")
    print(to_yaml(manifest))

Nothing here talks to a cluster: the DAGs hand the dict to ``SparkKubernetesOperator`` (``schedule.deploy:
kubernetes``), which creates the object. Restarts are left to Airflow (``restartPolicy: Never``): a retry is a new
Airflow try, and a new SparkApplication, with the same scoring run id, as with ``spark-submit``; it finishes what an
earlier try started.

How a failed driver reaches Airflow: the driver container (``spark-kubernetes-driver``) runs spark-submit in client
mode, which exits with :mod:`scoring.spark_entry`'s status (75 transient, 1 terminal, 2 config), and spark_entry
writes its error record to the container's termination message file (:data:`TERMINATION_LOG`). Kubernetes keeps both
in the pod's status (``state.terminated.exitCode`` / ``.message``); spark-operator copies the exit code into the
SparkApplication's ``status.applicationState.errorMessage`` ("driver container failed with ExitCode: 75, Reason:
Error"). :func:`driver_outcome` reads them back, so that the DAG's operator retries a transient failure only.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from scoring.config import JobConfig

API_VERSION = "sparkoperator.k8s.io/v1beta2"
KIND = "SparkApplication"
IMAGE_PLACEHOLDER = "<registry>/scoring:<version>"
"""Stands in for the image until a deployment names its own (``image=``)."""
APP_ROOT = "/opt/scoring"
"""Where the image holds the project: ``conf/``, ``sidecars/`` and ``scoring/spark_entry.py`` below it."""
ENTRY_FILE = "scoring/spark_entry.py"
EXECUTOR_POD_TEMPLATE = "sidecars/k8s/executor-pod-template.yaml"
EXECUTOR_CONTAINER = "spark-kubernetes-executor"
"""The container of the pod template that Spark fills in with the executor (the template's first container)."""
SERVICE_ACCOUNT = "spark"
DRIVER_CONTAINER = "spark-kubernetes-driver"
"""The driver pod's container that Spark (and spark-operator) name, running spark-submit in client mode."""
TERMINATION_LOG = "/dev/termination-log"
"""Kubernetes' default ``terminationMessagePath``: what a container writes there becomes its termination message."""
TERMINATION_LOG_ENV = "SCORING_TERMINATION_LOG"
"""Overrides :data:`TERMINATION_LOG` (a pod with another ``terminationMessagePath``)."""
TERMINATION_MESSAGE_MAX_BYTES = 4096
"""Kubernetes keeps at most this much of a termination message."""


def image_path(path: str, app_root: str = APP_ROOT) -> str:
    """`path` inside the image: project-relative paths are placed under `app_root`, absolute ones are kept."""
    return path if posixpath.isabs(path) else posixpath.join(app_root, path)


def application_name(config: JobConfig) -> str:
    """A DNS-1123 name for the SparkApplication (the operator may add a suffix per run)."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"scoring-{config.name}".lower()).strip("-")
    return name[:63].rstrip("-")


def spark_conf(config: JobConfig, *, app_root: str = APP_ROOT) -> dict[str, str]:
    """The Delta/Spark defaults, the job's own ``spark.conf`` and, for Triton, the executor pod template."""
    from scoring.adapters.spark import DEFAULTS

    conf = {**DEFAULTS, **config.spark.conf}
    if config.runtime.backend == "triton":
        # Spark reads the template where spark-submit runs (the operator's submission pod with spark-operator): the
        # file must be there at this path, as it is in our image. spark-operator 2.x can take it inline instead
        # (spec.executor.template).
        conf["spark.kubernetes.executor.podTemplateFile"] = image_path(EXECUTOR_POD_TEMPLATE, app_root)
        conf["spark.kubernetes.executor.podTemplateContainerName"] = EXECUTOR_CONTAINER
    return conf


def render_manifest(
    config: JobConfig,
    config_file: str,
    *,
    overrides: Sequence[str] = (),
    image: str = IMAGE_PLACEHOLDER,
    app_root: str = APP_ROOT,
    namespace: str | None = None,
    service_account: str = SERVICE_ACCOUNT,
    executor_instances: int = 2,
) -> dict[str, Any]:
    """The SparkApplication for `config` as a dict.

    `config_file` is the job config's path inside the image (relative paths are under `app_root`); `overrides` are
    ``key=value`` strings passed as ``--set`` (they may hold Airflow templates, rendered by the operator).
    `namespace` defaults to ``schedule.namespace``, else ``default``.
    """
    from pyspark import __version__ as spark_version

    from scoring.adapters.spark import delta_package

    name = application_name(config)
    labels = {"app.kubernetes.io/part-of": "scoring", "scoring/job": name}
    arguments = [image_path(config_file, app_root)]
    for item in overrides:
        arguments += ["--set", item]
    namespace = namespace or (config.schedule.namespace if config.schedule else "default")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": f"local://{image_path(ENTRY_FILE, app_root)}",
            "arguments": arguments,
            "sparkVersion": spark_version,
            "deps": {"packages": [delta_package()]},
            "sparkConf": spark_conf(config, app_root=app_root),
            "restartPolicy": {"type": "Never"},
            "driver": {"cores": 1, "memory": "2g", "serviceAccount": service_account, "labels": dict(labels)},
            "executor": {"instances": executor_instances, "cores": 1, "memory": "2g", "labels": dict(labels)},
        },
    }


def to_yaml(manifest: dict[str, Any]) -> str:
    """The manifest as YAML, keys in the order written (``kubectl apply -f`` takes it as is)."""
    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=120)


def termination_message(record: Mapping[str, Any]) -> str:
    """`record` (``{"error": {...}}``) as compact JSON that fits a termination message: the message and the hint
    are shortened when it would not."""
    error = dict(record.get("error") or {})
    text = json.dumps({"error": error}, separators=(",", ":"), default=str)
    for field in ("hint", "message"):
        while len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES and len(str(error.get(field) or "")) > 20:
            over = len(text.encode()) - TERMINATION_MESSAGE_MAX_BYTES
            value = str(error[field])
            error[field] = value[: max(16, len(value) - over - 8)] + "..."
            text = json.dumps({"error": error}, separators=(",", ":"), default=str)
    return text


@dataclasses.dataclass(frozen=True)
class DriverOutcome:
    """How the driver of a SparkApplication ended, as far as the pod and the application status tell."""

    exit_code: int | None
    """The driver container's exit code; None when the driver never exited on its own (evicted, deleted, lost
    node, submission failed): then nothing ran to completion and a retry may help."""
    record: dict[str, Any] | None
    """The error record spark_entry left in the termination message (``{"error": {...}}``), when there is one."""
    source: str
    """Where the exit code came from, for the task log."""

    @property
    def retry_can_help(self) -> bool:
        from scoring.scheduling import retry_can_help

        return retry_can_help(self.exit_code)

    def describe(self) -> str:
        error = (self.record or {}).get("error") or {}
        what = f"{error.get('type')}: {error.get('message')}" if error else "no error record"
        hint = f"\n  how to fix: {error['hint']}" if error.get("hint") else ""
        code = "no exit code" if self.exit_code is None else f"exit code {self.exit_code}"
        return f"the Spark driver failed ({code}, from {self.source}): {what}{hint}"


_EXIT_CODE = re.compile(r"ExitCode:\s*(-?\d+)")


def _plain(obj: Any) -> Any:
    """A Kubernetes client model (``V1Pod``) as the API's JSON dict (camelCase keys); dicts pass through."""
    if obj is None or isinstance(obj, Mapping):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def _driver_state(pod: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    status = next((s for s in statuses if s.get("name") == DRIVER_CONTAINER), statuses[0] if statuses else None)
    if status is None:
        return None
    return (status.get("state") or {}).get("terminated") or (status.get("lastState") or {}).get("terminated")


def error_record_from_message(message: str | None) -> dict[str, Any] | None:
    """The error record in a termination message, or None when the message is not one."""
    try:
        record = json.loads(message or "")
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("error"), dict) else None


def driver_outcome(pod: Any = None, application: Any = None) -> DriverOutcome:
    """Read how the driver ended from what the operator sees: the driver pod (a ``V1Pod`` or its JSON dict) and the
    SparkApplication object (its JSON dict, as the custom-objects API returns it).

    The exit code comes from the driver container's terminated state; without one (the pod is gone), from the
    application's ``errorMessage`` ("driver container failed with ExitCode: N, ..."); else from the error record.
    """
    terminated = _driver_state(_plain(pod))
    record = error_record_from_message((terminated or {}).get("message"))
    if terminated is not None and terminated.get("exitCode") is not None:
        return DriverOutcome(int(terminated["exitCode"]), record, f"container {DRIVER_CONTAINER}")
    state = ((_plain(application) or {}).get("status") or {}).get("applicationState") or {}
    found = _EXIT_CODE.search(str(state.get("errorMessage") or ""))
    if found:
        return DriverOutcome(int(found.group(1)), record, f"SparkApplication state {state.get('state')}")
    if record is not None and isinstance(record["error"].get("exit_code"), int):
        return DriverOutcome(int(record["error"]["exit_code"]), record, "the termination message")
    source = f"SparkApplication state {state.get('state')}: {state.get('errorMessage')}" if state else "nothing"
    return DriverOutcome(None, record, source)
