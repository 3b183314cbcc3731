"""The Kubernetes manifests of a job: a ConfigMap with its config and a SparkApplication (Kubeflow spark-operator v2,
``sparkoperator.k8s.io/v1beta2``) whose pods carry everything inline: the Triton sidecar, the model export, the
credentials' references, sizes and placement.

    manifests = render(load_job_config(path), path)          # resolves the model alias once (a registry call)
    write([manifests], "deploy/")                              # kubectl apply -f deploy/

What is rendered (docs/kubernetes.md has the whole story):

- a ConfigMap ``<app>-job`` holding the config file as written, mounted at :data:`CONFIG_DIR` in the driver and in
  the export init containers (``${VAR}`` in it expand there, from the pods' environment);
- a SparkApplication ``<app>`` running :mod:`scoring.deploy.spark_submit` from the image (``sidecars/k8s/Dockerfile``) with
  the config, the caller's ``--set`` overrides and the **pinned** model version (``--set model.uri=models:/<name>/<v>``).
  Both pod templates are inline (``spec.driver.template``, ``spec.executor.template``): spark-operator 2.1 and later
  write their own pod template files after the user's ``sparkConf``, so nothing about pod templates may go there
  (:data:`POD_TEMPLATE_KEYS` are refused). With a template, the operator's webhook leaves the pods alone, so the
  templates carry the node selector, tolerations, priority class, volumes and environment themselves.
- With ``runtime.backend: triton``, every executor pod and the driver pod (the run checks the model's outputs on a few
  rows on the driver before scoring) get an init container that runs ``scoring export <pinned version>`` into an
  ``emptyDir`` model repository, then NVIDIA's Triton server as a native sidecar (an init container with
  ``restartPolicy: Always``, Kubernetes 1.29+) bound to the pod's loopback, with a startup probe on
  ``/v2/health/ready``: Spark's container starts only once the server is ready. Both share an in-memory ``/dev/shm``.
  The driver's config is forced to ``runtime.triton.launch=external`` at ``127.0.0.1``.

No environment variable's value is written (:mod:`scoring.deploy.k8s_env`): ``spark.conf`` and ``kubernetes.env`` go into
the SparkApplication with their ``${VAR}`` as written (``$(VAR)`` in ``env``), the pods get each variable from a Secret
or ``kubernetes.env``, and :mod:`scoring.deploy.spark_submit` expands ``spark.conf``'s in the driver before the session starts.
Every name and key is checked against the API server's rules before anything is returned (:mod:`scoring.config.k8s_names`);
:func:`application_name` gives distinct jobs distinct names.

Nothing here talks to a cluster, except :func:`apply_config_map` (the DAG's ``score`` task uses it). The DAG renders
per run (:func:`scoring.deploy.scheduling.kubernetes_manifests`) and hands the SparkApplication to
``SparkKubernetesOperator``. Restarts are left to Airflow (``restartPolicy: Never``): a retry is a new Airflow try, and
a new SparkApplication, with the same scoring run id, as with ``spark-submit``; it finishes what an earlier try started.

The pods' pieces (the sidecar, the export, the pod templates) are in :mod:`scoring.deploy.k8s_pods`; the YAML files
in :mod:`scoring.deploy.k8s_yaml`; how a failed driver reaches Airflow (its exit code and error record, read back by
:func:`driver_outcome`) in :mod:`scoring.deploy.outcome`. Their public names are re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scoring.config import JobConfig, KubernetesConfig, k8s_names, load_job_config
from scoring.deploy import k8s_env, outcome
from scoring.deploy.k8s_pods import ALLOW_CLIENT_SHM_SINCE as ALLOW_CLIENT_SHM_SINCE
from scoring.deploy.k8s_pods import (
    CONFIG_DIR,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
    VOLUME_JOB,
    VOLUME_MODELS,
    VOLUME_SHM,
    export_container,
    pod_template,
    scoring_env,
    triton_sidecar,
)
from scoring.deploy.k8s_pods import EXPORT_CONTAINER as EXPORT_CONTAINER
from scoring.deploy.k8s_pods import EXPORT_TARGET as EXPORT_TARGET
from scoring.deploy.k8s_pods import MODEL_REPOSITORY as MODEL_REPOSITORY
from scoring.deploy.k8s_pods import PROBE_PERIOD_S as PROBE_PERIOD_S
from scoring.deploy.k8s_pods import TRITON_CONTAINER as TRITON_CONTAINER
from scoring.deploy.k8s_yaml import to_yaml
from scoring.deploy.k8s_yaml import write as write
from scoring.deploy.outcome import DRIVER_CONTAINER
from scoring.deploy.outcome import TERMINATION_LOG as TERMINATION_LOG
from scoring.deploy.outcome import TERMINATION_LOG_ENV as TERMINATION_LOG_ENV
from scoring.deploy.outcome import TERMINATION_MESSAGE_MAX_BYTES as TERMINATION_MESSAGE_MAX_BYTES
from scoring.deploy.outcome import DriverOutcome as DriverOutcome
from scoring.deploy.outcome import error_record_from_message as error_record_from_message
from scoring.deploy.outcome import termination_message as termination_message
from scoring.errors import ConfigError, ModelError

# (the ``X as X`` imports above re-export the pods', the YAML's and the outcome's public names)

API_VERSION = "sparkoperator.k8s.io/v1beta2"
KIND = "SparkApplication"
IMAGE_PLACEHOLDER = "<registry>/scoring:<version>"
"""Stands in for the image until a deployment names its own (``kubernetes.image``, ``$SCORING_IMAGE``, ``--image``)."""
IMAGE_ENV = "SCORING_IMAGE"
"""Environment variable naming the driver/executor image when the config does not."""
APP_ROOT = "/opt/scoring"
"""Where the image holds the project: ``scoring/deploy/spark_submit.py`` below it (``sidecars/k8s/Dockerfile``)."""
ENTRY_FILE = "scoring/deploy/spark_submit.py"
EXECUTOR_CONTAINER = "spark-kubernetes-executor"
"""The executor pod's container that spark-operator names in the template it writes (Spark fills it in)."""
POD_TEMPLATE_KEYS = (
    "spark.kubernetes.driver.podTemplateFile",
    "spark.kubernetes.driver.podTemplateContainerName",
    "spark.kubernetes.executor.podTemplateFile",
    "spark.kubernetes.executor.podTemplateContainerName",
)
"""Spark settings spark-operator 2.1+ overrides with its own (kubeflow/spark-operator
``internal/controller/sparkapplication/submission.go``): a sidecar given through them would silently disappear."""
EXPORT_READS = ("runtime.triton.model", "input.features", "model.tracking_uri", "model.registry_uri")
"""Config keys the export init container reads from the ConfigMap's file: a ``--set`` of them at render time would
reach the driver only, so it is refused (put them in the file)."""
_MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")


def image_path(path: str, app_root: str = APP_ROOT) -> str:
    """`path` inside the image: project-relative paths are placed under `app_root`, absolute ones are kept."""
    return path if posixpath.isabs(path) else posixpath.join(app_root, path)


APP_NAME_MAX = 56
"""Longest SparkApplication name: the operator's ``<app>-driver`` pod and our ``<app>-job`` ConfigMap still fit 63
(a DNS label, as a pod's host name is)."""
NAME_HASH_CHARS = 10
"""Hex digits of the job name's SHA-256 that end a name the job name could not be used in as written."""
_HASHED = re.compile(rf"-[0-9a-f]{{{NAME_HASH_CHARS}}}\Z")


def _dns_name(text: str, limit: int = 63) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].rstrip("-")


def application_name(config: JobConfig) -> str:
    """The SparkApplication's name, ``scoring-<job name>``: a DNS-1035 label (spark-operator's webhook requires one)
    of at most :data:`APP_NAME_MAX` characters; the ConfigMap is named after it.

    Distinct job names give distinct names. A job name used as written (lower-case letters, digits and ``-``, short
    enough) is kept; any other (upper case, ``_``, ``.``, other characters, too long) is shortened and ended with
    ``-`` and :data:`NAME_HASH_CHARS` hex digits of its SHA-256: ``Churn``, ``churn_`` and two long names sharing
    their first 60 characters get different names. A name used as written never ends like a hashed one (such a name
    is hashed too), so the two kinds cannot meet."""
    wanted = f"scoring-{config.name}"
    plain = _dns_name(wanted, APP_NAME_MAX)
    if plain == wanted and not _HASHED.search(plain):
        return plain
    digest = hashlib.sha256(config.name.encode("utf-8", "surrogatepass")).hexdigest()[:NAME_HASH_CHARS]
    return f"{_dns_name(wanted, APP_NAME_MAX - NAME_HASH_CHARS - 1)}-{digest}"


def namespace_for(config: JobConfig) -> str:
    """``kubernetes.namespace``, else ``schedule.namespace``, else ``default``: one answer for the manifests and the
    DAG's operator."""
    if config.kubernetes is not None and config.kubernetes.namespace:
        return config.kubernetes.namespace
    return config.schedule.namespace if config.schedule else "default"


def image_for(config: JobConfig, image: str | None = None) -> str:
    """The driver/executor image: `image`, else ``kubernetes.image``, else ``$SCORING_IMAGE``, else the placeholder."""
    configured = config.kubernetes.image if config.kubernetes is not None else None
    return image or configured or os.environ.get(IMAGE_ENV) or IMAGE_PLACEHOLDER


def spark_conf(config: JobConfig) -> dict[str, str]:
    """The Delta/Spark defaults and the job's own ``spark.conf``; never a pod template setting (refused). For the
    manifests, `config` is loaded with ``keep_env_refs``: a ``${VAR}`` stays as written."""
    from scoring.adapters.spark import DEFAULTS

    given = sorted(set(config.spark.conf) & set(POD_TEMPLATE_KEYS))
    if given:
        raise ConfigError(
            f"spark.conf sets {', '.join(given)}: spark-operator 2.1+ replaces them with its own pod template, so "
            "whatever they add (a sidecar) silently disappears",
            hint="remove them; the rendered SparkApplication carries its pod templates inline "
            "(kubernetes: section, docs/kubernetes.md)",
        )
    return {**DEFAULTS, **config.spark.conf}


# -- the model version, pinned once -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PinnedModel:
    """The registered model version a rendered run scores with, in the driver's config and in every export."""

    name: str
    version: str
    requested_uri: str
    """What the config asked for, e.g. ``models:/churn@champion``."""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def resolve_alias(name: str, alias: str, *, tracking_uri: str | None = None, registry_uri: str | None = None) -> str:
    """The version `alias` points to now: one registry API call, no artifact download."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    registry = registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or tracking
    try:
        return str(
            MlflowClient(tracking_uri=tracking, registry_uri=registry).get_model_version_by_alias(name, alias).version
        )
    except MlflowException as e:
        raise ModelError(
            f"cannot resolve models:/{name}@{alias} in the registry at {registry}: {e.message}",
            hint="check the model name and alias; set model.registry_uri or MLFLOW_REGISTRY_URI if this is the wrong "
            "registry, or render with a pinned version (--set model.uri=models:/<name>/<version>)",
        ) from None


def pin_model(config: JobConfig) -> PinnedModel:
    """``model.uri`` pinned to a version: as given when it names one, else its alias resolved once, now."""
    found = _MODEL_URI.fullmatch(config.model.uri)
    if found is None:  # the config already refused it; kept for a config built by hand
        raise ConfigError(f"model.uri {config.model.uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    if found["version"]:
        return PinnedModel(found["name"], found["version"], config.model.uri)
    version = resolve_alias(
        found["name"], found["alias"], tracking_uri=config.model.tracking_uri, registry_uri=config.model.registry_uri
    )
    return PinnedModel(found["name"], version, config.model.uri)


# -- the manifests ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Manifests:
    """What one job renders to: the ConfigMap, then the SparkApplication that mounts it."""

    name: str
    namespace: str
    model: PinnedModel
    config_map: dict[str, Any]
    application: dict[str, Any]

    def objects(self) -> list[dict[str, Any]]:
        """In the order to apply them."""
        return [self.config_map, self.application]

    def files(self) -> dict[str, str]:
        """File name -> YAML; ``kubectl apply -f`` on the folder applies them in name order (the ConfigMap first)."""
        return {
            f"{self.name}-configmap.yaml": to_yaml(self.config_map),
            f"{self.name}-sparkapplication.yaml": to_yaml(self.application),
        }


def _megabytes(mib: int) -> str:
    """Spark's spelling of a size in MiB (``2048m``)."""
    return f"{mib}m"


def _check(config: JobConfig, k8s: KubernetesConfig, overrides: Sequence[str]) -> None:
    problems = []
    if config.spark.master:
        problems.append(
            f"spark.master is {config.spark.master!r}: on Kubernetes spark-operator sets the master (remove it, or "
            "--set spark.master=null)"
        )
    if config.runtime.backend == "triton":
        if config.runtime.triton.model.instance_kind == "KIND_GPU" and not k8s.sidecar.gpus:
            problems.append(
                "runtime.triton.model.instance_kind is KIND_GPU but kubernetes.sidecar.gpus is 0: the server could "
                "not load the model (set kubernetes.sidecar.gpus, or instance_kind KIND_CPU)"
            )
        for item in overrides:
            key = item.partition("=")[0].strip()
            if any(key == read or key.startswith(f"{read}.") for read in EXPORT_READS):
                problems.append(
                    f"--set {key}: the model export in each pod reads it from the config file, where this override "
                    "does not reach (write it in the file)"
                )
    if problems:
        raise ConfigError(
            f"job {config.name!r} cannot be rendered for Kubernetes:\n" + "\n".join(f"  {p}" for p in problems),
            hint="see docs/kubernetes.md",
        )


def render(
    config: JobConfig,
    config_file: str | os.PathLike[str],
    *,
    config_text: str | None = None,
    overrides: Sequence[str] = (),
    image: str | None = None,
    model: PinnedModel | None = None,
    app_root: str = APP_ROOT,
) -> Manifests:
    """The manifests of `config` (loaded from `config_file` with `overrides` applied).

    The ConfigMap holds `config_text` (default: the file's text) under the file's name; `overrides` (``key=value``,
    possibly Airflow templates) go to the driver as ``--set``, followed by the pinned model version (`model`, else
    resolved now: :func:`pin_model`) and, for Triton, the sidecar's loopback address.

    No environment variable's value is read for the manifests: ``spark.conf`` and ``kubernetes.env`` are taken from
    `config_text` and `overrides` loaded again with their ``${VAR}`` kept (never from `config`, which may have been
    loaded with them expanded), and every ``${VAR}`` the pods will expand must be provided to them
    (:mod:`scoring.deploy.k8s_env`). Every name and key in the objects is checked against the API server's rules
    (:mod:`scoring.config.k8s_names`). Both refusals are ConfigErrors.
    """
    k8s = config.kubernetes or KubernetesConfig()
    _check(config, k8s, overrides)
    file_name = Path(config_file).name
    if config_text is None:
        config_text = Path(config_file).read_text()
    as_written = load_job_config(config_file, overrides, keep_env_refs=True, text=config_text)
    conf = spark_conf(as_written)
    k8s = k8s.model_copy(update={"env": (as_written.kubernetes or KubernetesConfig()).env})  # ${VAR} as written
    k8s_env.check(k8s_env.references(config_text, overrides), k8s, config.name)
    model = model or pin_model(config)
    image = image_for(config, image)
    name = application_name(config)
    namespace = namespace_for(config)
    config_map_name = f"{name}-job"
    config_path = posixpath.join(CONFIG_DIR, file_name)
    labels = {"app.kubernetes.io/name": "scoring", "app.kubernetes.io/part-of": "scoring", "scoring/job": name}
    annotations = {"scoring/model-uri": model.uri, "scoring/requested-model-uri": model.requested_uri}
    triton = config.runtime.backend == "triton"

    arguments = [config_path]
    for item in overrides:
        if item.partition("=")[0].strip() != "model.uri":  # pinned below
            arguments += ["--set", item]
    arguments += ["--set", f"model.uri={model.uri}"]
    if triton:
        port = TRITON_GRPC_PORT if config.runtime.triton.protocol == "grpc" else TRITON_HTTP_PORT
        arguments += ["--set", "runtime.triton.launch=external", "--set", f"runtime.triton.url=127.0.0.1:{port}"]

    job_volume = {"name": VOLUME_JOB, "configMap": {"name": config_map_name}}
    job_mount = {"name": VOLUME_JOB, "mountPath": CONFIG_DIR, "readOnly": True}
    shm_mount = {"name": VOLUME_SHM, "mountPath": "/dev/shm"}
    sidecar_volumes = [
        {"name": VOLUME_MODELS, "emptyDir": {}},
        {"name": VOLUME_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": f"{k8s.sidecar.shm_size_mib}Mi"}},
    ]

    def pod_init() -> list[dict[str, Any]]:
        return [export_container(k8s, image, model.uri, config_path), triton_sidecar(config, k8s)] if triton else []

    metrics = {"prometheus.io/scrape": "true", "prometheus.io/port": str(TRITON_METRICS_PORT)} if triton else {}

    driver_labels = {**labels, "scoring/role": "driver"}
    driver_mounts = [job_mount, shm_mount] if triton else [job_mount]
    driver_container = {"name": DRIVER_CONTAINER, **scoring_env(k8s), "volumeMounts": driver_mounts}
    driver_template = pod_template(
        k8s.driver,
        driver_labels,
        driver_container,
        init_containers=pod_init(),
        volumes=[job_volume, *(sidecar_volumes if triton else [])],
        annotations={**annotations, **metrics},
    )
    executor_labels = {**labels, "scoring/role": "executor"}
    executor_container = {
        "name": EXECUTOR_CONTAINER,
        **scoring_env(k8s),
        **({"volumeMounts": [shm_mount]} if triton else {}),
    }
    executor_template = pod_template(
        k8s.executor,
        executor_labels,
        executor_container,
        init_containers=pod_init(),
        volumes=[job_volume, *sidecar_volumes] if triton else [],
        annotations={**annotations, **metrics},
    )

    from pyspark import __version__ as spark_version

    driver: dict[str, Any] = {
        "cores": k8s.driver.cores,
        "memory": _megabytes(k8s.driver.memory_mib),
        **({"memoryOverhead": _megabytes(k8s.driver.memory_overhead_mib)} if k8s.driver.memory_overhead_mib else {}),
        "serviceAccount": k8s.service_account,
        "labels": driver_labels,
        "template": driver_template,
    }
    executor: dict[str, Any] = {
        **({} if k8s.executor.dynamic_allocation else {"instances": k8s.executor.instances}),
        "cores": k8s.executor.cores,
        "memory": _megabytes(k8s.executor.memory_mib),
        **(
            {"memoryOverhead": _megabytes(k8s.executor.memory_overhead_mib)} if k8s.executor.memory_overhead_mib else {}
        ),
        "labels": executor_labels,
        "template": executor_template,
    }
    spec: dict[str, Any] = {
        "type": "Python",
        "pythonVersion": "3",
        "mode": "cluster",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        **({"imagePullSecrets": list(k8s.image_pull_secrets)} if k8s.image_pull_secrets else {}),
        "mainApplicationFile": f"local://{image_path(ENTRY_FILE, app_root)}",
        "arguments": arguments,
        "sparkVersion": spark_version,
        "sparkConf": conf,
        "restartPolicy": {"type": "Never"},
        "driver": driver,
        "executor": executor,
    }
    dynamic = k8s.executor.dynamic_allocation
    if dynamic is not None:
        spec["dynamicAllocation"] = {
            "enabled": True,
            "initialExecutors": dynamic.initial_executors or dynamic.min_executors,
            "minExecutors": dynamic.min_executors,
            "maxExecutors": dynamic.max_executors,
        }
    application = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "annotations": dict(annotations)},
        "spec": spec,
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name, "namespace": namespace, "labels": dict(labels)},
        "data": {file_name: config_text},
    }
    problems = k8s_names.manifest_problems([config_map, application])
    if problems:
        raise ConfigError(
            f"job {config.name!r}: the API server would refuse these names or keys:\n"
            + "\n".join(f"  {line}" for line in problems),
            hint="change the config key (or rename the file) each line names; docs/kubernetes.md, 'Names'",
        )
    return Manifests(name, namespace, model, copy.deepcopy(config_map), copy.deepcopy(application))


def apply_config_map(api: Any, config_map: Mapping[str, Any]) -> str:
    """Create or replace `config_map` through `api` (a ``kubernetes.client.CoreV1Api``); returns what was done."""
    from kubernetes.client.exceptions import ApiException

    metadata = config_map["metadata"]
    try:
        api.replace_namespaced_config_map(metadata["name"], metadata["namespace"], dict(config_map))
        return "replaced"
    except ApiException as e:
        if e.status != 404:
            raise
    api.create_namespaced_config_map(metadata["namespace"], dict(config_map))
    return "created"


def _plain(obj: Any) -> Any:
    """A Kubernetes client model (``V1Pod``) as the API's JSON dict (camelCase keys); dicts pass through."""
    if obj is None or isinstance(obj, Mapping):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def driver_outcome(pod: Any = None, application: Any = None) -> DriverOutcome:
    """:func:`scoring.deploy.outcome.driver_outcome` of the driver pod (a ``V1Pod`` or its JSON dict) and the
    SparkApplication object (its JSON dict, as the custom-objects API returns it)."""
    return outcome.driver_outcome(_plain(pod), _plain(application))
