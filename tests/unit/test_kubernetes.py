"""The manifests rendered for a job (no cluster anywhere: their shape, and that they validate against the real schemas).

Every rendered object is validated against the Kubernetes API schemas (``kubernetes-validate``; the pod templates as
``v1`` ``PodTemplate``s) and every SparkApplication against spark-operator's CRD (``tests/data/spark-operator/``).
Golden files per config shape are under ``tests/data/golden/``; regenerate them with
``SCORING_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/unit/test_kubernetes.py -k golden`` and review the diff.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import yaml

from scoring.config import load_job_config
from scoring.deploy import kubernetes
from scoring.errors import ConfigError, ModelError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
GOLDEN = DATA / "golden"
CRD = DATA / "spark-operator" / "sparkoperator.k8s.io_sparkapplications.yaml"
NIGHTLY = ROOT / "conf" / "jobs" / "nightly.yaml"
DEMO_TRITON = ROOT / "conf" / "jobs" / "demo-triton.yaml"
KUBERNETES_VERSIONS = ("1.29", "1.37")
"""The oldest Kubernetes with native sidecars on by default, and the newest kubernetes-validate knows."""
PINNED = kubernetes.PinnedModel("churn", "7", "models:/churn@champion")
SHAPES = sorted(path.name for path in GOLDEN.iterdir() if (path / "jobs").is_dir())


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch):
    """Rendering resolves an alias through the registry: here every alias points to version 7, and the calls are
    counted (``kubernetes.resolve_alias.calls``)."""
    calls = []

    def resolve(name, alias, *, tracking_uri=None, registry_uri=None):
        calls.append((name, alias))
        return "7"

    resolve.calls = calls
    monkeypatch.setattr(kubernetes, "resolve_alias", resolve)
    monkeypatch.delenv(kubernetes.IMAGE_ENV, raising=False)


def _render(path=NIGHTLY, *overrides, model=None, image=None, render_overrides=None):
    config = load_job_config(path, overrides)
    given = list(overrides) if render_overrides is None else render_overrides
    return kubernetes.render(config, path, overrides=given, model=model, image=image)


def _triton(*overrides, **kwargs):
    return _render(DEMO_TRITON, *overrides, **kwargs)


def _containers(template, kind="containers"):
    return {c["name"]: c for c in template["spec"].get(kind, [])}


# -- schemas ----------------------------------------------------------------------------------------------------------


def _strict(schema):
    """The CRD's schema with unknown fields refused wherever it lists the known ones (the API server would prune them
    silently); free-form parts (``x-kubernetes-preserve-unknown-fields``) stay free."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator():
    from jsonschema import Draft202012Validator

    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta2"]
    return Draft202012Validator(_strict(version["schema"]["openAPIV3Schema"]))


def crd_errors(application) -> list[str]:
    errors = sorted(_crd_validator().iter_errors(application), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]


def kubernetes_errors(obj, version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [
            f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}) at {list(e.absolute_path)}: {e.message}"
        ]
    return []


def pod_templates(application):
    """The driver's and the executors' pod templates as ``v1`` PodTemplates (the CRD leaves them free-form)."""
    for role in ("driver", "executor"):
        yield {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{application['metadata']['name']}-{role}"},
            "template": application["spec"][role]["template"],
        }


def mount_errors(template) -> list[str]:
    """What the schemas cannot see: every mount names a volume of the pod, container names are unique."""
    spec = template["template"]["spec"]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    problems = [
        f"{template['metadata']['name']}: {c['name']} mounts {m['name']}, not a volume of the pod"
        for c in containers
        for m in c.get("volumeMounts", [])
        if m["name"] not in volumes
    ]
    names = [c["name"] for c in containers]
    if len(set(names)) != len(names):
        problems.append(f"{template['metadata']['name']}: container names repeat: {names}")
    return problems


def all_errors(manifests: kubernetes.Manifests) -> list[str]:
    problems = crd_errors(manifests.application)
    for version in KUBERNETES_VERSIONS:
        problems += kubernetes_errors(manifests.config_map, version)
        for template in pod_templates(manifests.application):
            problems += kubernetes_errors(template, version)
    for template in pod_templates(manifests.application):
        problems += mount_errors(template)
    return problems


def _shape(shape: str) -> list[kubernetes.Manifests]:
    jobs = sorted((GOLDEN / shape / "jobs").glob("*.yaml"))
    return [kubernetes.render(load_job_config(path), path) for path in jobs]


@pytest.mark.parametrize("shape", SHAPES)
def test_every_rendered_object_validates_against_the_kubernetes_and_spark_operator_schemas(shape):
    for manifests in _shape(shape):
        assert all_errors(manifests) == []


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("runtime.backend=triton",),
        ("runtime.backend=triton", "runtime.triton.shared_memory=system", "runtime.triton.protocol=http"),
        ("kubernetes.executor.dynamic_allocation={max_executors: 5}",),
    ],
)
def test_the_project_s_own_jobs_render_valid_manifests(overrides):
    assert all_errors(_render(NIGHTLY, *overrides)) == []


def test_the_schemas_catch_what_the_api_server_would_refuse_or_silently_drop():
    manifests = _triton()
    application = manifests.application
    misspelt = {**application, "spec": {**application["spec"], "executor": {**application["spec"]["executor"]}}}
    misspelt["spec"]["executor"]["tempalte"] = misspelt["spec"]["executor"].pop("template")
    assert any("tempalte" in problem for problem in crd_errors(misspelt))
    wrong_type = {**application, "spec": {**application["spec"], "executor": {"cores": "4"}}}
    assert any("'4' is not of type 'integer'" in problem for problem in crd_errors(wrong_type))
    (_, executor) = pod_templates(application)
    executor["template"]["spec"]["initContainers"][1]["restartPolcy"] = "Always"
    assert kubernetes_errors(executor, "1.37")
    del executor["template"]["spec"]["volumes"][0]
    assert mount_errors(executor)


# -- the Triton sidecar, inline in the executor's pod template --------------------------------------------------------


def test_the_sidecar_is_in_spec_executor_template_and_nothing_about_pod_templates_is_in_spark_conf():
    spec = _triton().application["spec"]
    sidecars = _containers(spec["executor"]["template"], "initContainers")
    assert sidecars[kubernetes.TRITON_CONTAINER]["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["executor"]["template"]["spec"]["containers"]] == [kubernetes.EXECUTOR_CONTAINER]
    assert not [key for key in spec["sparkConf"] if "podtemplate" in key.lower() or "template" in key.lower()]
    assert "volumes" not in spec and "sidecars" not in spec["executor"]  # nothing left for the operator's webhook


def test_the_sidecar_is_a_native_sidecar_on_loopback_gated_by_a_startup_probe_on_health_ready():
    template = _triton().application["spec"]["executor"]["template"]
    init = template["spec"]["initContainers"]
    assert [c["name"] for c in init] == [kubernetes.EXPORT_CONTAINER, kubernetes.TRITON_CONTAINER]  # export first
    sidecar = init[1]
    assert "restartPolicy" not in init[0]  # the export runs to completion before the server starts
    assert sidecar["image"] == "nvcr.io/nvidia/tritonserver:26.06-py3"
    assert sidecar["command"] == ["tritonserver"]
    args = sidecar["args"]
    assert "--model-repository=/models" in args and "--model-control-mode=none" in args
    assert "--http-address=127.0.0.1" in args and "--grpc-address=127.0.0.1" in args
    probe = sidecar["startupProbe"]
    assert "/v2/health/ready" in probe["exec"]["command"][-1] and "127.0.0.1/8000" in probe["exec"]["command"][-1]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600  # kubernetes.sidecar.startup_timeout_s
    assert "/v2/health/live" in sidecar["livenessProbe"]["exec"]["command"][-1]


def test_the_executor_and_the_sidecar_share_an_in_memory_dev_shm_and_the_model_repository():
    template = _triton("kubernetes.sidecar.shm_size_mib=512").application["spec"]["executor"]["template"]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    shm = [name for name, v in volumes.items() if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert len(shm) == 1 and volumes[shm[0]]["emptyDir"]["sizeLimit"] == "512Mi"
    executor = template["spec"]["containers"][0]
    sidecar = _containers(template, "initContainers")[kubernetes.TRITON_CONTAINER]
    for container in (executor, sidecar):
        assert {"name": shm[0], "mountPath": "/dev/shm"} in container["volumeMounts"]
    export = _containers(template, "initContainers")[kubernetes.EXPORT_CONTAINER]
    repository = [m for m in export["volumeMounts"] if m["mountPath"] == kubernetes.MODEL_REPOSITORY]
    assert repository and "emptyDir" in volumes[repository[0]["name"]]
    assert {"name": repository[0]["name"], "mountPath": "/models", "readOnly": True} in sidecar["volumeMounts"]


@pytest.mark.parametrize(
    ("shared_memory", "image", "flag"),
    [
        ("system", "nvcr.io/nvidia/tritonserver:26.06-py3", True),
        ("system", "nvcr.io/nvidia/tritonserver:26.04-py3", True),
        ("system", "nvcr.io/nvidia/tritonserver:25.01-py3", False),  # before the flag: allowed without it
        ("system", "nvcr.io/nvidia/tritonserver@sha256:" + "a" * 64, True),  # cannot date it: pass it
        ("none", "nvcr.io/nvidia/tritonserver:26.06-py3", False),
    ],
)
def test_client_shared_memory_is_allowed_when_configured_and_the_server_needs_the_flag(shared_memory, image, flag):
    manifests = _triton(f"runtime.triton.shared_memory={shared_memory}", f"kubernetes.sidecar.image={image}")
    for role in ("driver", "executor"):
        sidecar = _containers(manifests.application["spec"][role]["template"], "initContainers")["tritonserver"]
        assert ("--allow-client-shm=true" in sidecar["args"]) is flag


def test_the_driver_gets_the_sidecar_too_and_talks_to_it_on_loopback():
    """The run checks the model's outputs on a few rows on the driver before scoring: through its own sidecar."""
    for protocol, port in (("grpc", 8001), ("http", 8000)):
        spec = _triton(f"runtime.triton.protocol={protocol}").application["spec"]
        assert "tritonserver" in _containers(spec["driver"]["template"], "initContainers")
        args = spec["arguments"]
        assert args[-4:] == ["--set", "runtime.triton.launch=external", "--set", f"runtime.triton.url=127.0.0.1:{port}"]


def test_the_sidecar_requests_gpus_and_the_pods_land_on_the_gpu_pool():
    manifests = _shape("gpu")[0]
    spec = manifests.application["spec"]
    for role in ("driver", "executor"):
        pod = spec[role]["template"]["spec"]
        sidecar = _containers(spec[role]["template"], "initContainers")["tritonserver"]
        assert sidecar["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert sidecar["resources"]["requests"] == {"cpu": "4000m", "memory": "16384Mi", "nvidia.com/gpu": "1"}
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"] == [{"operator": "Exists", "key": "nvidia.com/gpu", "effect": "NoSchedule"}]
        assert pod["priorityClassName"] == "batch-gpu"
        assert "nvidia.com/gpu" not in str(pod["containers"])  # the GPU is the sidecar's, not Spark's


# -- one pinned model version for the whole run -----------------------------------------------------------------------


def test_the_alias_is_resolved_once_and_the_driver_and_every_export_get_that_version():
    manifests = _triton()
    assert kubernetes.resolve_alias.calls == [("churn", "champion")]
    assert manifests.model == kubernetes.PinnedModel("churn", "7", "models:/churn@champion")
    spec = manifests.application["spec"]
    assert spec["arguments"][:3] == ["/etc/scoring/jobs/demo-triton.yaml", "--set", "model.uri=models:/churn/7"]
    for role in ("driver", "executor"):
        export = _containers(spec[role]["template"], "initContainers")["export-model"]
        assert export["command"] == ["scoring", "export", "models:/churn/7"]
        assert export["args"] == [
            "--repository",
            "/models",
            "--target",
            "onnxruntime",
            "--config",
            "/etc/scoring/jobs/demo-triton.yaml",
        ]
        assert export["image"] == spec["image"]
    assert manifests.application["metadata"]["annotations"]["scoring/model-uri"] == "models:/churn/7"


def test_a_version_in_the_config_needs_no_registry_and_a_given_pin_is_used_as_is():
    fraud = GOLDEN / "several-models" / "jobs" / "fraud.yaml"
    assert kubernetes.render(load_job_config(fraud), fraud).model.uri == "models:/fraud/12"
    pinned = kubernetes.PinnedModel("churn", "3", "models:/churn@champion")
    assert _triton(model=pinned).application["spec"]["arguments"][2] == "model.uri=models:/churn/3"
    assert kubernetes.resolve_alias.calls == []


def test_a_render_time_model_override_is_pinned_and_not_repeated():
    manifests = _triton("model.uri=models:/churn@challenger")
    arguments = manifests.application["spec"]["arguments"]
    assert [a for a in arguments if a.startswith("model.uri=")] == ["model.uri=models:/churn/7"]
    assert kubernetes.resolve_alias.calls == [("churn", "challenger")]


def test_an_alias_the_registry_does_not_know_is_a_model_error(monkeypatch, tmp_path):
    monkeypatch.undo()  # the real resolver, against an empty registry
    monkeypatch.delenv(kubernetes.IMAGE_ENV, raising=False)
    with pytest.raises(ModelError, match="cannot resolve models:/churn@champion"):
        kubernetes.resolve_alias("churn", "champion", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")


# -- config, credentials, resources -----------------------------------------------------------------------------------


def test_the_job_config_comes_from_a_config_map_mounted_where_the_driver_reads_it():
    manifests = _render(NIGHTLY)
    config_map = manifests.config_map
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "scoring-nightly-job"
    assert config_map["data"] == {"nightly.yaml": NIGHTLY.read_text()}  # as written: ${VAR} expand in the pod
    spec = manifests.application["spec"]
    assert spec["arguments"][0] == "/etc/scoring/jobs/nightly.yaml"
    driver = spec["driver"]["template"]["spec"]
    (volume,) = [v for v in driver["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "scoring-nightly-job"
    assert {"name": volume["name"], "mountPath": "/etc/scoring/jobs", "readOnly": True} in driver["containers"][0][
        "volumeMounts"
    ]
    assert yaml.safe_load(kubernetes.to_yaml(config_map)) == config_map
    assert "|" in kubernetes.to_yaml(config_map)  # the file reads as written, as a block


def test_credentials_come_from_secrets_by_reference_and_are_never_inlined(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cr3t-token-value")
    manifests = _shape("cpu")[0]
    text = "".join(manifests.files().values())
    assert "s3cr3t-token-value" not in text
    spec = manifests.application["spec"]
    for container in (
        spec["driver"]["template"]["spec"]["containers"][0],
        spec["executor"]["template"]["spec"]["containers"][0],
    ):
        assert {"name": "MLFLOW_TRACKING_TOKEN", "valueFrom": {"secretKeyRef": {"name": "mlflow", "key": "token"}}} in (
            container["env"]
        )
        assert {"name": "MLFLOW_TRACKING_URI", "value": "https://mlflow.example.com"} in container["env"]
        assert container["envFrom"] == [{"secretRef": {"name": "object-store"}}]
    assert spec["imagePullSecrets"] == ["registry-credentials"]


def test_the_export_gets_the_same_credentials_as_the_driver():
    spec = _shape("gpu")[0].application["spec"]
    driver = spec["driver"]["template"]["spec"]["containers"][0]
    export = _containers(spec["executor"]["template"], "initContainers")["export-model"]
    assert export["env"] == driver["env"] and export["envFrom"] == driver["envFrom"]


def test_resources_come_from_the_config():
    spec = _shape("cpu")[0].application["spec"]
    assert (spec["driver"]["cores"], spec["driver"]["memory"]) == (1, "2048m")
    executor = spec["executor"]
    assert (executor["instances"], executor["cores"], executor["memory"], executor["memoryOverhead"]) == (
        4,
        4,
        "8192m",
        "4096m",
    )
    assert "dynamicAllocation" not in spec
    gpu = _shape("gpu")[0].application["spec"]
    assert "instances" not in gpu["executor"]
    assert gpu["dynamicAllocation"] == {"enabled": True, "initialExecutors": 2, "minExecutors": 2, "maxExecutors": 20}
    assert (gpu["driver"]["cores"], gpu["driver"]["memory"]) == (2, "4096m")


def test_the_namespace_and_the_image_come_from_the_config_else_the_schedule_and_the_environment(monkeypatch):
    assert _render(NIGHTLY).namespace == "default"
    assert _render(NIGHTLY, "schedule.namespace=batch").namespace == "batch"
    assert _render(NIGHTLY, "schedule.namespace=batch", "kubernetes.namespace=other").namespace == "other"
    assert _render(NIGHTLY).application["spec"]["image"] == kubernetes.IMAGE_PLACEHOLDER
    monkeypatch.setenv(kubernetes.IMAGE_ENV, "registry.example/scoring:from-env")
    assert _render(NIGHTLY).application["spec"]["image"] == "registry.example/scoring:from-env"
    configured = _render(NIGHTLY, "kubernetes.image=registry.example/scoring:1.2")
    assert configured.application["spec"]["image"] == "registry.example/scoring:1.2"
    assert _render(NIGHTLY, image="x/y:3").application["spec"]["image"] == "x/y:3"


def test_an_embedded_job_has_no_sidecar_and_keeps_its_spark_conf():
    spec = _render(NIGHTLY, "spark.conf={spark.sql.shuffle.partitions: 64}").application["spec"]
    assert spec["sparkConf"]["spark.sql.shuffle.partitions"] == "64"
    assert spec["sparkConf"]["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    for role in ("driver", "executor"):
        assert "initContainers" not in spec[role]["template"]["spec"]
    assert spec["mainApplicationFile"] == "local:///opt/scoring/scoring/deploy/spark_submit.py"
    assert spec["restartPolicy"] == {"type": "Never"}  # Airflow retries (a new SparkApplication, the same run id)
    assert "deps" not in spec  # the Delta jars are in the image: no Maven resolution per run


def test_overrides_become_set_arguments_in_order_before_the_pin():
    manifests = _render(
        NIGHTLY,
        render_overrides=["input.where=ds = '{{ data_interval_start | ds }}'", "run_id=scoring__nightly__{{ run_id }}"],
    )
    assert manifests.application["spec"]["arguments"] == [
        "/etc/scoring/jobs/nightly.yaml",
        "--set",
        "input.where=ds = '{{ data_interval_start | ds }}'",
        "--set",
        "run_id=scoring__nightly__{{ run_id }}",
        "--set",
        "model.uri=models:/churn/7",
    ]


# -- refusals ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("spark.conf={spark.kubernetes.executor.podTemplateFile: /t.yaml}",), r"spark-operator 2.1\+ replaces them"),
        (("spark.master=local[4]",), "spark-operator sets the master"),
        (("runtime.triton.model.instance_kind=KIND_GPU",), "kubernetes.sidecar.gpus is 0"),
        (("runtime.triton.model.max_batch_size=8",), "--set runtime.triton.model.max_batch_size: the model export"),
    ],
)
def test_what_would_break_in_the_cluster_is_refused_when_rendering(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _triton(*overrides)


def test_an_unpinned_sidecar_image_is_refused():
    for image in ("nvcr.io/nvidia/tritonserver", "nvcr.io/nvidia/tritonserver:latest"):
        with pytest.raises(ConfigError, match="is not pinned"):
            load_job_config(DEMO_TRITON, [f"kubernetes.sidecar.image={image}"])


def test_two_jobs_of_one_name_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="scoring-nightly"):
        kubernetes.write([_render(NIGHTLY), _render(NIGHTLY)], tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_job_name_becomes_a_valid_kubernetes_name():
    assert kubernetes.application_name(load_job_config(NIGHTLY, ["name=churn-eu"])) == "scoring-churn-eu"  # as is
    config = load_job_config(NIGHTLY, ["name=Churn_Scores.EU nightly"])
    assert kubernetes.application_name(config).startswith("scoring-churn-scores-eu-nightly-")  # and a hash
    long = load_job_config(NIGHTLY, ["name=" + "x" * 80])
    assert len(kubernetes.application_name(long)) <= 56  # room for -driver and -job


# -- golden files, the ConfigMap's apply ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_golden_manifests_per_config_shape(shape, tmp_path):
    rendered = tmp_path / "rendered"
    kubernetes.write(_shape(shape), rendered)
    expected = GOLDEN / shape / "rendered"
    if os.environ.get("SCORING_UPDATE_GOLDEN"):
        expected.mkdir(exist_ok=True)
        for old in expected.glob("*.yaml"):
            old.unlink()
        for path in rendered.iterdir():
            (expected / path.name).write_text(path.read_text())
    assert sorted(p.name for p in rendered.iterdir()) == sorted(p.name for p in expected.glob("*.yaml"))
    for path in rendered.iterdir():
        assert path.read_text() == (expected / path.name).read_text(), (
            f"{path.name} differs from {expected / path.name}; if the change is intended, regenerate the golden "
            "files (see tests/data/golden/README.md) and review the diff"
        )


class _ConfigMaps:
    """A CoreV1Api's ConfigMap calls, against a dict."""

    def __init__(self, existing=()):
        self.maps = {name: {} for name in existing}
        self.calls = []

    def replace_namespaced_config_map(self, name, namespace, body):
        from kubernetes.client.exceptions import ApiException

        self.calls.append(("replace", name, namespace))
        if name not in self.maps:
            raise ApiException(status=404, reason="Not Found")
        self.maps[name] = body

    def create_namespaced_config_map(self, namespace, body):
        self.calls.append(("create", body["metadata"]["name"], namespace))
        self.maps[body["metadata"]["name"]] = body


def test_the_config_map_is_created_then_replaced():
    config_map = _render(NIGHTLY).config_map
    api = _ConfigMaps()
    assert kubernetes.apply_config_map(api, config_map) == "created"
    assert kubernetes.apply_config_map(api, config_map) == "replaced"
    assert api.calls == [
        ("replace", "scoring-nightly-job", "default"),
        ("create", "scoring-nightly-job", "default"),
        ("replace", "scoring-nightly-job", "default"),
    ]
    assert api.maps["scoring-nightly-job"]["data"] == config_map["data"]


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
    from scoring.deploy.scheduling import score_failure

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
