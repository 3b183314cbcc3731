"""The pieces of a job's pods that :mod:`scoring.deploy.kubernetes` puts into its SparkApplication: NVIDIA's Triton
server as a native sidecar (bound to the pod's loopback, with a startup probe on ``/v2/health/ready``), the init
container that exports the pinned model version into the model repository, the environment of every container that
runs scoring code, and a pod template (placement, volumes, init containers). Re-exported by
:mod:`scoring.deploy.kubernetes`, which says what is rendered and why."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from scoring.config import JobConfig, KubernetesConfig, KubernetesPodConfig
from scoring.deploy import k8s_env

CONFIG_DIR = "/etc/scoring/jobs"
"""Where the job's ConfigMap is mounted: the config file keeps its own name there (the job name defaults to it)."""
MODEL_REPOSITORY = "/models"
"""The sidecar's model repository in the pod (an ``emptyDir`` the export init container fills)."""
EXPORT_TARGET = "onnxruntime"
"""What the export writes for NVIDIA's image: its ONNX Runtime backend runs ``model.onnx`` (the ``python`` target
needs onnxruntime inside Triton's Python environment, which NVIDIA's image does not have)."""
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
VOLUME_JOB = "job-config"
"""The volumes of a pod, by name: the job's ConfigMap, the model repository, the in-memory ``/dev/shm``."""
VOLUME_MODELS = "model-repository"
VOLUME_SHM = "dshm"


def scoring_env(k8s: KubernetesConfig) -> dict[str, Any]:
    """The ``env`` / ``envFrom`` of every container that runs scoring code (:func:`scoring.deploy.k8s_env.container_env`)."""
    return k8s_env.container_env(k8s)


def tolerations(pod: KubernetesPodConfig) -> list[dict[str, Any]]:
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


def allow_client_shm(image: str) -> bool:
    """Whether `image` needs (and knows) ``--allow-client-shm=true``: tags ``yy.mm...`` from
    :data:`ALLOW_CLIENT_SHM_SINCE` on, and any tag or digest we cannot date (a flag too many fails fast; one too few
    fails every shared-memory request)."""
    tag = image.rpartition("/")[2].partition(":")[2]
    found = re.match(r"(\d{2})\.(\d{2})", tag)
    return found is None or (int(found[1]), int(found[2])) >= ALLOW_CLIENT_SHM_SINCE


def health_probe(route: str) -> list[str]:
    """An exec probe asking the loopback-bound server `route` (the kubelet's httpGet would connect to the pod's IP,
    where nothing listens): bash's /dev/tcp, no curl needed in the image."""
    request = f"GET {route} HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n"
    return [
        "/bin/bash",
        "-c",
        f"exec 3<>/dev/tcp/127.0.0.1/{TRITON_HTTP_PORT} && printf '{request}' >&3 && head -n 1 <&3 | grep -q ' 200 '",
    ]


def triton_sidecar(config: JobConfig, k8s: KubernetesConfig) -> dict[str, Any]:
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
    if config.runtime.triton.shared_memory == "system" and allow_client_shm(sidecar.image):
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
            "exec": {"command": health_probe("/v2/health/ready")},
            "periodSeconds": PROBE_PERIOD_S,
            "timeoutSeconds": 3,
            "failureThreshold": max(1, math.ceil(sidecar.startup_timeout_s / PROBE_PERIOD_S)),
        },
        "livenessProbe": {
            "exec": {"command": health_probe("/v2/health/live")},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [
            {"name": VOLUME_MODELS, "mountPath": MODEL_REPOSITORY, "readOnly": True},
            {"name": VOLUME_SHM, "mountPath": "/dev/shm"},
        ],
    }


def export_container(k8s: KubernetesConfig, image: str, model_uri: str, config_path: str) -> dict[str, Any]:
    """``scoring export`` of the pinned version into the model repository, before the sidecar starts. It holds the
    model as the server does, so it gets the sidecar's memory."""
    memory = f"{k8s.sidecar.memory_mib}Mi"
    return {
        "name": EXPORT_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["scoring", "export", model_uri],
        "args": ["--repository", MODEL_REPOSITORY, "--target", EXPORT_TARGET, "--config", config_path],
        **scoring_env(k8s),
        "resources": {"requests": {"cpu": "1", "memory": memory}, "limits": {"memory": memory}},
        "volumeMounts": [
            {"name": VOLUME_JOB, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": VOLUME_MODELS, "mountPath": MODEL_REPOSITORY},
        ],
    }


def pod_template(
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
        spec["tolerations"] = tolerations(pod)
    if init_containers:
        spec["initContainers"] = list(init_containers)
    spec["containers"] = [container]
    if volumes:
        spec["volumes"] = list(volumes)
    return {"metadata": metadata, "spec": spec}
