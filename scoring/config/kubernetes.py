"""The ``kubernetes:`` section: what ``scoring render k8s`` puts in the manifests (image, sizes, placement, Secrets)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from scoring.config.base import (
    MAX_SECONDS,
    _at_most,
    _Int,
    _Seconds,
    _show,
    _spark_text,
    _Strict,
    _Threads,
)
from scoring.config.k8s_names import RULES

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MiB = Annotated[_Int, Field(ge=1), _at_most(4 * 1024 * 1024, "more than 4 TiB is a typo")]


def _k8s_check(rule: str, what: str) -> Any:
    """A before-validator holding a name (or a list of names) to one of the API server's rules
    (:mod:`scoring.config.k8s_names`)."""

    def check(value: Any) -> Any:
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for name in names:
            problems = RULES[rule](name) if isinstance(name, str) else []
            if problems:
                raise ValueError(f"{_show(name)} is not {what}: it {'; it '.join(problems)}")
        return value

    return check


_k8s_names = _k8s_check("dns1123_subdomain", "a Kubernetes object name (a DNS-1123 subdomain)")
_k8s_namespace = _k8s_check("dns1123_label", "a Kubernetes namespace (a DNS-1123 label, at most 63 characters)")
_k8s_key = _k8s_check("config_map_key", "a key of a Kubernetes Secret")


def _env_names(value: Any) -> Any:
    for name in value if isinstance(value, dict) else ():
        if isinstance(name, str) and not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{_show(name)} is not an environment variable name (letters, digits and _)")
    return value


class KubernetesSecretKeyConfig(_Strict):
    """One key of a Kubernetes Secret, referenced (``secretKeyRef``): its value never appears in a manifest."""

    secret: str
    """Name of the Secret, in the job's namespace."""
    key: str
    """Key in the Secret."""

    _names = field_validator("secret", mode="before")(_k8s_names)
    _keys = field_validator("key", mode="before")(_k8s_key)


class KubernetesTolerationConfig(_Strict):
    """A toleration of the pods, e.g. for a tainted GPU node pool (``{key: nvidia.com/gpu, operator: Exists}``)."""

    key: str | None = None
    """Taint key; empty with ``operator: Exists`` tolerates every taint."""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    """Taint value (``operator: Equal`` only)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty: every effect."""
    toleration_s: Annotated[_Int, Field(ge=0), _at_most(MAX_SECONDS, "longer than a year is a typo")] | None = None
    """With ``effect: NoExecute``: how long a pod stays on a node after the taint appears, in seconds."""

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesTolerationConfig:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration with operator Equal needs a key (or use operator: Exists)")
        if self.toleration_s is not None and self.effect != "NoExecute":
            raise ValueError("toleration_s applies to effect NoExecute only")
        return self


class KubernetesPodConfig(_Strict):
    """Size and placement of a Spark pod (the driver, or each executor)."""

    cores: _Threads = 1
    """Spark cores of the pod (``spark.driver.cores`` / ``spark.executor.cores``), its CPU request; 1 to 1,024."""
    memory_mib: _MiB = 2048
    """JVM heap of the pod in MiB (``spark.driver.memory`` / ``spark.executor.memory``). Spark adds the overhead
    (``memory_overhead_mib``) to get the container's memory request and limit."""
    memory_overhead_mib: _MiB | None = None
    """Memory beyond the heap in MiB: Python workers, Arrow buffers, off-heap. Default: Spark's (10 %, 40 % for
    Python jobs under spark-operator, at least 384 MiB). Python workers holding an in-process model need more."""
    node_selector: dict[str, str] = {}
    """Node labels the pod must run on, e.g. ``{nvidia.com/gpu.present: "true"}`` for a GPU pool."""
    tolerations: list[KubernetesTolerationConfig] = []
    """Taints the pod tolerates, e.g. the GPU pool's."""
    priority_class: str | None = None
    """``priorityClassName`` of the pod (a PriorityClass the cluster defines)."""

    _names = field_validator("priority_class", mode="before")(_k8s_names)


class KubernetesDriverConfig(KubernetesPodConfig):
    """The driver pod. With ``runtime.backend: triton`` it runs the Triton sidecar too (the run checks the model's
    outputs on a few rows on the driver before scoring), so give it the executors' GPU node selector and tolerations
    when the sidecar has a GPU."""


class KubernetesDynamicAllocationConfig(_Strict):
    """Executors added and removed by Spark with the work queued (``spec.dynamicAllocation``, shuffle tracking on).
    Each new executor pod starts its own sidecar: it exports the model and loads it before it scores."""

    min_executors: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")] = 1
    """Fewest executors (at least 1: Airflow's SparkKubernetesOperator refuses a minimum of 0)."""
    max_executors: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")]
    """Most executors, hence most sidecars (and GPUs) one run holds."""
    initial_executors: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")] | None = (
        None
    )
    """Executors requested at start (default: ``min_executors``)."""

    @model_validator(mode="after")
    def _ordered(self) -> KubernetesDynamicAllocationConfig:
        initial = self.initial_executors if self.initial_executors is not None else self.min_executors
        if not self.min_executors <= initial <= self.max_executors:
            raise ValueError(
                f"executors must satisfy min_executors <= initial_executors <= max_executors, got "
                f"{self.min_executors} <= {initial} <= {self.max_executors}"
            )
        return self


class KubernetesExecutorConfig(KubernetesPodConfig):
    """The executor pods: how many, and each one's size and placement."""

    instances: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")] = 2
    """Executors of a run (``spec.executor.instances``); leave it out with ``dynamic_allocation``."""
    dynamic_allocation: KubernetesDynamicAllocationConfig | None = None
    """Bounds for a varying number of executors, instead of ``instances``."""

    @model_validator(mode="after")
    def _one_sizing(self) -> KubernetesExecutorConfig:
        if self.dynamic_allocation is not None and "instances" in self.model_fields_set:
            raise ValueError("give instances or dynamic_allocation, not both")
        return self


class KubernetesSidecarConfig(_Strict):
    """The Triton Inference Server beside each executor (and the driver), with ``runtime.backend: triton``: a native
    sidecar (Kubernetes 1.29+) on the pod's loopback, serving the run's pinned model version."""

    image: str = "nvcr.io/nvidia/tritonserver:26.06-py3"
    """NVIDIA's Triton image, pinned by tag (``:<yy.mm>-py3``) or digest (``@sha256:...``); ``latest`` is refused."""
    gpus: Annotated[_Int, Field(ge=0), _at_most(64, "more GPUs than a node has")] = 0
    """GPUs the sidecar requests (``nvidia.com/gpu``); 0: a CPU sidecar. ``runtime.triton.model.instance_kind:
    KIND_GPU`` needs at least 1."""
    cpu_millicores: Annotated[_Int, Field(ge=1), _at_most(1_024_000, "more cores than a node has")] = 2000
    """CPU the sidecar requests, in millicores (1000 = one core)."""
    memory_mib: _MiB = 4096
    """Memory the sidecar requests and is limited to, in MiB (the model's weights and the server's buffers)."""
    shm_size_mib: _MiB = 1024
    """Size limit of the pod's in-memory ``/dev/shm`` (shared by the executor and the sidecar, for
    ``runtime.triton.shared_memory: system``), in MiB; it counts against the pod's memory."""
    startup_timeout_s: Annotated[_Seconds, Field(gt=0)] = 600.0
    """How long the sidecar may take to become ready (``/v2/health/ready``) before the pod is failed."""
    extra_args: list[str] = []
    """Further ``tritonserver`` flags, e.g. ``[--log-verbose=1]``."""

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        tag = value.rpartition("/")[2].partition(":")[2]
        if "@sha256:" not in value and (not tag or tag == "latest"):
            raise ValueError(
                f"{_show(value)} is not pinned: give a tag such as nvcr.io/nvidia/tritonserver:26.06-py3 (or a digest)"
            )
        return value

    @field_validator("extra_args")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        for arg in value:
            if not arg.startswith("--"):
                raise ValueError(f"{_show(arg)} is not a tritonserver flag (--name=value)")
        return value


class KubernetesConfig(_Strict):
    """What ``scoring render k8s`` (and the DAG's ``deploy: kubernetes``) put in the manifests beyond the job itself:
    the image, sizes, placement and where credentials come from (Secrets, by reference)."""

    image: str | None = None
    """Driver and executor image (``sidecars/k8s/Dockerfile``). Default: ``$SCORING_IMAGE``, else a placeholder."""
    namespace: str | None = None
    """Namespace of the manifests. Default: ``schedule.namespace``, else ``default``."""
    service_account: str = "spark"
    """Service account of the driver (it creates the executor pods)."""
    image_pull_secrets: list[str] = []
    """Secrets holding the registry credentials for the images."""
    env: dict[str, str] = {}
    """Plain environment variables of the driver, the executors and the model export, e.g. ``MLFLOW_TRACKING_URI``.
    Never credentials: use ``secret_env`` or ``env_from_secrets``."""
    secret_env: dict[str, KubernetesSecretKeyConfig] = {}
    """Environment variables read from Secrets (``secretKeyRef``), e.g. ``{MLFLOW_TRACKING_TOKEN: {secret: mlflow,
    key: token}}``."""
    env_from_secrets: list[str] = []
    """Secrets whose every key becomes an environment variable (``envFrom``), e.g. the object store's
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""
    driver: KubernetesDriverConfig = KubernetesDriverConfig()
    executor: KubernetesExecutorConfig = KubernetesExecutorConfig()
    sidecar: KubernetesSidecarConfig = KubernetesSidecarConfig()

    _names = field_validator("image_pull_secrets", "env_from_secrets", mode="before")(_k8s_names)
    _namespace = field_validator("namespace", mode="before")(_k8s_namespace)
    _env = field_validator("env", "secret_env", mode="before")(_env_names)

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, value: Any) -> Any:
        return {k: _spark_text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_source_per_variable(self) -> KubernetesConfig:
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"{', '.join(both)} given in both env and secret_env: keep one")
        return self
