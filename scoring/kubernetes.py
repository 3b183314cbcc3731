"""A SparkApplication manifest (Kubeflow spark-operator, ``sparkoperator.k8s.io/v1beta2``) for a job config.

The manifest runs the same entry point as ``spark-submit`` (:mod:`scoring.spark_entry`) from an image that holds this
project at :data:`APP_ROOT` (``conf/``, ``sidecars/`` and the ``scoring`` package installed with ``pip install -e``),
with the Delta jars as ``deps.packages`` and the Delta settings in ``sparkConf``. With ``runtime.backend: triton`` the
executors get the Triton sidecar pod template (``sidecars/k8s/executor-pod-template.yaml``).

    manifest = render_manifest(load_job_config("conf/jobs/nightly.yaml"), "conf/jobs/nightly.yaml")
    print(to_yaml(manifest))

Nothing here talks to a cluster: the DAGs hand the dict to ``SparkKubernetesOperator`` (``schedule.deploy:
kubernetes``), which creates the object. Restarts are left to Airflow (``restartPolicy: Never``), so a retry is a new
Airflow try with a new run id, as with ``spark-submit``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
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
