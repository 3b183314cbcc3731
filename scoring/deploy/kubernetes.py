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
Every name and key is checked against the API server's rules before anything is returned (:mod:`scoring.deploy.k8s_names`);
:func:`application_name` gives distinct jobs distinct names.

Nothing here talks to a cluster, except :func:`apply_config_map` (the DAG's ``score`` task uses it). The DAG renders
per run (:func:`scoring.deploy.scheduling.kubernetes_manifests`) and hands the SparkApplication to
``SparkKubernetesOperator``. Restarts are left to Airflow (``restartPolicy: Never``): a retry is a new Airflow try, and
a new SparkApplication, with the same scoring run id, as with ``spark-submit``; it finishes what an earlier try started.

How a failed driver reaches Airflow (its exit code and error record, read back by :func:`driver_outcome`) is in
:mod:`scoring.deploy.outcome`; the YAML and :func:`apply_config_map` are in :mod:`scoring.deploy.k8s_yaml`. Both are
re-exported here.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scoring.config import JobConfig, KubernetesConfig, KubernetesPodConfig, load_job_config
from scoring.deploy import k8s_env, k8s_names
from scoring.deploy.k8s_yaml import apply_config_map as apply_config_map  # re-exported: the YAML and the outcome
from scoring.deploy.k8s_yaml import to_yaml
from scoring.deploy.k8s_yaml import write as write
from scoring.deploy.outcome import DRIVER_CONTAINER
from scoring.deploy.outcome import TERMINATION_LOG as TERMINATION_LOG
from scoring.deploy.outcome import TERMINATION_LOG_ENV as TERMINATION_LOG_ENV
from scoring.deploy.outcome import TERMINATION_MESSAGE_MAX_BYTES as TERMINATION_MESSAGE_MAX_BYTES
from scoring.deploy.outcome import DriverOutcome as DriverOutcome
from scoring.deploy.outcome import driver_outcome as driver_outcome
from scoring.deploy.outcome import error_record_from_message as error_record_from_message
from scoring.deploy.outcome import termination_message as termination_message
from scoring.errors import ConfigError, ModelError

API_VERSION = "sparkoperator.k8s.io/v1beta2"
KIND = "SparkApplication"
IMAGE_PLACEHOLDER = "<registry>/scoring:<version>"
"""Stands in for the image until a deployment names its own (``kubernetes.image``, ``$SCORING_IMAGE``, ``--image``)."""
IMAGE_ENV = "SCORING_IMAGE"
"""Environment variable naming the driver/executor image when the config does not."""
APP_ROOT = "/opt/scoring"
"""Where the image holds the project: ``scoring/deploy/spark_submit.py`` below it (``sidecars/k8s/Dockerfile``)."""
ENTRY_FILE = "scoring/deploy/spark_submit.py"
CONFIG_DIR = "/etc/scoring/jobs"
"""Where the job's ConfigMap is mounted: the config file keeps its own name there (the job name defaults to it)."""
MODEL_REPOSITORY = "/models"
"""The sidecar's model repository in the pod (an ``emptyDir`` the export init container fills)."""
EXPORT_TARGET = "onnxruntime"
"""What the export writes for NVIDIA's image: its ONNX Runtime backend runs ``model.onnx`` (the ``python`` target
needs onnxruntime inside Triton's Python environment, which NVIDIA's image does not have)."""
EXECUTOR_CONTAINER = "spark-kubernetes-executor"
"""The executor pod's container that spark-operator names in the template it writes (Spark fills it in)."""
TRITON_CONTAINER = "tritonserver"
EXPORT_CONTAINER = "export-model"
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
ALLOW_CLIENT_SHM_SINCE = (26, 4)
"""First NVIDIA Triton release (yy.mm) that refuses client shared memory unless started with
``--allow-client-shm=true`` (triton-inference-server/server #8721, merged for the release as #8739, 2026-04). Older
servers allow it without the flag and do not know the flag."""
PROBE_PERIOD_S = 5
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
_VOLUME_JOB = "job-config"
_VOLUME_MODELS = "model-repository"
_VOLUME_SHM = "dshm"
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


def _env(k8s: KubernetesConfig) -> dict[str, Any]:
    """The ``env`` / ``envFrom`` of every container that runs scoring code (:func:`scoring.deploy.k8s_env.container_env`)."""
    return k8s_env.container_env(k8s)


def _tolerations(pod: KubernetesPodConfig) -> list[dict[str, Any]]:
    out = []
    for t in pod.tolerations:
        item: dict[str, Any] = {"operator": t.operator}
        if t.key:
            item["key"] = t.key
        if t.value is not None:
            item["value"] = t.value
        if t.effect:
            item["effect"] = t.effect
        if t.toleration_s is not None:
            item["tolerationSeconds"] = t.toleration_s
        out.append(item)
    return out


def _allow_client_shm(image: str) -> bool:
    """Whether `image` needs (and knows) ``--allow-client-shm=true``: tags ``yy.mm...`` from
    :data:`ALLOW_CLIENT_SHM_SINCE` on, and any tag or digest we cannot date (a flag too many fails fast; one too few
    fails every shared-memory request)."""
    tag = image.rpartition("/")[2].partition(":")[2]
    found = re.match(r"(\d{2})\.(\d{2})", tag)
    return found is None or (int(found[1]), int(found[2])) >= ALLOW_CLIENT_SHM_SINCE


def _health_probe(route: str) -> list[str]:
    """An exec probe asking the loopback-bound server `route` (the kubelet's httpGet would connect to the pod's IP,
    where nothing listens): bash's /dev/tcp, no curl needed in the image."""
    request = f"GET {route} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
    return [
        "/bin/bash",
        "-c",
        f"exec 3<>/dev/tcp/127.0.0.1/{TRITON_HTTP_PORT} && printf '{request}' >&3 && head -n 1 <&3 | grep -q ' 200 '",
    ]


def _sidecar(config: JobConfig, k8s: KubernetesConfig) -> dict[str, Any]:
    """NVIDIA's Triton server as a native sidecar: started before Spark's container, ready before it starts, stopped
    after it; inference on loopback only, metrics on the pod's address for Prometheus."""
    sidecar = k8s.sidecar
    args = [
        f"--model-repository={MODEL_REPOSITORY}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--http-address=127.0.0.1",
        f"--http-port={TRITON_HTTP_PORT}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={TRITON_GRPC_PORT}",
        "--metrics-address=0.0.0.0",
        f"--metrics-port={TRITON_METRICS_PORT}",
        "--exit-timeout-secs=10",
    ]
    if config.runtime.triton.shared_memory == "system" and _allow_client_shm(sidecar.image):
        args.append("--allow-client-shm=true")
    args += sidecar.extra_args
    requests: dict[str, Any] = {"cpu": f"{sidecar.cpu_millicores}m", "memory": f"{sidecar.memory_mib}Mi"}
    limits: dict[str, Any] = {"memory": f"{sidecar.memory_mib}Mi"}
    if sidecar.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(sidecar.gpus)
    return {
        "name": TRITON_CONTAINER,
        "image": sidecar.image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": ["tritonserver"],
        "args": args,
        "ports": [
            {"name": "triton-http", "containerPort": TRITON_HTTP_PORT, "protocol": "TCP"},
            {"name": "triton-grpc", "containerPort": TRITON_GRPC_PORT, "protocol": "TCP"},
            {"name": "triton-metrics", "containerPort": TRITON_METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": {
            "exec": {"command": _health_probe("/v2/health/ready")},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 3,
            "failureThreshold": max(1, math.ceil(sidecar.startup_timeout_s / PROBE_PERIOD_S)),
        },
        "livenessProbe": {
            "exec": {"command": _health_probe("/v2/health/live")},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [
            {"name": _VOLUME_MODELS, "mountPath": MODEL_REPOSITORY, "readOnly": True},
            {"name": _VOLUME_SHM, "mountPath": "/dev/shm"},
        ],
    }


def _export(k8s: KubernetesConfig, image: str, model: PinnedModel, config_path: str) -> dict[str, Any]:
    """``scoring export`` of the pinned version into the model repository, before the sidecar starts. It holds the
    model as the server does, so it gets the sidecar's memory."""
    memory = f"{k8s.sidecar.memory_mib}Mi"
    return {
        "name": EXPORT_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["scoring", "export", model.uri],
        "args": ["--repository", MODEL_REPOSITORY, "--target", EXPORT_TARGET, "--config", config_path],
        **_env(k8s),
        "resources": {"requests": {"cpu": "1", "memory": memory}, "limits": {"memory": memory}},
        "volumeMounts": [
            {"name": _VOLUME_JOB, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": _VOLUME_MODELS, "mountPath": MODEL_REPOSITORY},
        ],
    }


def _pod_template(
    pod: KubernetesPodConfig,
    labels: Mapping[str, str],
    container: dict[str, Any],
    *,
    init_containers: Sequence[dict[str, Any]] = (),
    volumes: Sequence[dict[str, Any]] = (),
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"labels": dict(labels)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {}
    if pod.priority_class:
        spec["priorityClassName"] = pod.priority_class
    if pod.node_selector:
        spec["nodeSelector"] = dict(sorted(pod.node_selector.items()))
    if pod.tolerations:
        spec["tolerations"] = _tolerations(pod)
    if init_containers:
        spec["initContainers"] = list(init_containers)
    spec["containers"] = [container]
    if volumes:
        spec["volumes"] = list(volumes)
    return {"metadata": metadata, "spec": spec}


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
    (:mod:`scoring.deploy.k8s_names`). Both refusals are ConfigErrors.
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

    job_volume = {"name": _VOLUME_JOB, "configMap": {"name": config_map_name}}
    job_mount = {"name": _VOLUME_JOB, "mountPath": CONFIG_DIR, "readOnly": True}
    shm_mount = {"name": _VOLUME_SHM, "mountPath": "/dev/shm"}
    sidecar_volumes = [
        {"name": _VOLUME_MODELS, "emptyDir": {}},
        {"name": _VOLUME_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": f"{k8s.sidecar.shm_size_mib}Mi"}},
    ]

    def pod_init() -> list[dict[str, Any]]:
        return [_export(k8s, image, model, config_path), _sidecar(config, k8s)] if triton else []

    metrics = {"prometheus.io/scrape": "true", "prometheus.io/port": str(TRITON_METRICS_PORT)} if triton else {}

    driver_labels = {**labels, "scoring/role": "driver"}
    driver_mounts = [job_mount, shm_mount] if triton else [job_mount]
    driver_container = {"name": DRIVER_CONTAINER, **_env(k8s), "volumeMounts": driver_mounts}
    driver_template = _pod_template(
        k8s.driver,
        driver_labels,
        driver_container,
        init_containers=pod_init(),
        volumes=[job_volume, *(sidecar_volumes if triton else [])],
        annotations={**annotations, **metrics},
    )
    executor_labels = {**labels, "scoring/role": "executor"}
    executor_container = {"name": EXECUTOR_CONTAINER, **_env(k8s), **({"volumeMounts": [shm_mount]} if triton else {})}
    executor_template = _pod_template(
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
