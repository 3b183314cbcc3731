"""The triton backend against a real Triton Inference Server process (the tritonserver binary bundled in the
nvidia-pytriton wheel, Python backend), real Spark, Delta and MLflow."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pytest
from google.protobuf import text_format

from scoring import build_job_config, demo, run
from scoring.adapters import triton_server
from scoring.adapters.registry import resolve_model
from scoring.adapters.triton import TritonPredictor, TritonSpec
from scoring.adapters.triton_export import export_model
from scoring.config import TritonModelConfig
from scoring.errors import BackendUnavailableError, ModelError
from tests.integration.conftest import FEATURES, delta_version, features_of, read_delta


def _own_predict(model_uri: str, table: pa.Table):
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(model_uri).SerializeToString())
    return session.run(["label", "probabilities"], {"X": features_of(table).astype(np.float32)})


@pytest.fixture(scope="module")
def champion(lake):
    return resolve_model("models:/onnx_clf@champion")


@pytest.fixture(scope="module")
def repository(tmp_path_factory, champion) -> Path:
    repo = tmp_path_factory.mktemp("repository")
    export_model(champion, repo, target="python")
    return repo


@pytest.fixture(scope="module")
def server(repository):
    with triton_server.running_server(repository) as handle:
        yield handle


def _triton_job(lake, output, handle, **triton):
    protocol = triton.get("protocol", "grpc")
    url = handle.grpc_url if protocol == "grpc" else handle.http_url
    return lake.job(output, runtime={"backend": "triton", "triton": {"url": url, "timeout_s": 20, **triton}})


BACKENDS = {
    "embedded": None,
    "triton-grpc": {"protocol": "grpc"},
    "triton-http": {"protocol": "http"},
    "triton-grpc-shm": {"protocol": "grpc", "shared_memory": "system"},
    "triton-http-shm": {"protocol": "http", "shared_memory": "system"},
    "triton-grpc-1-inflight-small-requests": {"protocol": "grpc", "max_inflight": 1, "batch_rows": 128},
}


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_every_predictor_gives_the_models_own_predictions(spark, lake, server, champion, backend):
    """One contract for every runtime: same rows in, the model's own predictions out."""
    triton = BACKENDS[backend]
    output = f"contract_{backend.replace('-', '_')}"
    tree = lake.job(output) if triton is None else _triton_job(lake, output, server, **triton)
    summary = run(build_job_config(tree), spark=spark)
    assert summary.model_version == champion.version and summary.backend == ("embedded" if triton is None else "triton")
    out = read_delta(lake.root / output).sort_by("customer_id")
    label, proba = _own_predict(champion.uri, lake.table.sort_by("customer_id"))
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    np.testing.assert_allclose(np.stack(out.column("probabilities").to_numpy(zero_copy_only=False)), proba, rtol=1e-6)
    assert summary.rows_written == lake.table.num_rows


def test_the_python_target_config_parses_and_pins_the_version(repository, champion):
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse((repository / "onnx_clf" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "onnx_clf" and config.backend == "python"
    assert list(config.version_policy.specific.versions) == [int(champion.version)]
    assert config.HasField("dynamic_batching") and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert [i.name for i in config.input] == ["X"] and list(config.input[0].dims) == [len(FEATURES)]
    assert {o.name for o in config.output} == {"label", "probabilities"}
    version_dir = repository / "onnx_clf" / champion.version
    assert (version_dir / "model.onnx").exists() and (version_dir / "model.py").exists()


def test_the_onnxruntime_target_writes_a_config_for_the_onnx_runtime_backend(tmp_path, champion):
    """Our local server has no ONNX Runtime backend, so this target is checked by its files, not served here."""
    from tritonclient.grpc import model_config_pb2 as mc

    settings = TritonModelConfig(
        max_batch_size=4096,
        preferred_batch_sizes=[1024, 2048],
        max_queue_delay_us=200,
        max_queue_size=64,
        instance_count=2,
        instance_kind="KIND_GPU",
    )
    result = export_model(champion, tmp_path, target="onnxruntime", model_config=settings)
    config = text_format.Parse((tmp_path / "onnx_clf" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 4096
    assert list(config.dynamic_batching.preferred_batch_size) == [1024, 2048]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert (config.instance_group[0].count, config.instance_group[0].kind) == (2, mc.ModelInstanceGroup.KIND_GPU)
    label = next(o for o in config.output if o.name == "label")
    assert list(label.dims) == [1] and label.HasField("reshape")  # the model makes [batch]; Triton shows [batch, 1]
    assert sorted(p.name for p in (tmp_path / "onnx_clf" / result.version.__str__()).iterdir()) == [
        ".scoring-export.json",
        "model.onnx",
    ]


def test_exporting_the_same_version_twice_writes_nothing(tmp_path, champion):
    first = export_model(champion, tmp_path, target="python")
    stamp = (tmp_path / "onnx_clf" / champion.version / "model.onnx").stat().st_mtime_ns
    second = export_model(champion, tmp_path, target="python")
    assert first.changed and not second.changed
    assert (tmp_path / "onnx_clf" / champion.version / "model.onnx").stat().st_mtime_ns == stamp


def test_a_sklearn_model_is_converted_and_predicts_like_itself(tmp_path, lake):
    import onnxruntime

    ref = resolve_model("models:/skl_clf@champion")
    export_model(ref, tmp_path, target="onnxruntime", n_features=len(FEATURES))
    session = onnxruntime.InferenceSession(str(tmp_path / "skl_clf" / ref.version / "model.onnx"))
    x = features_of(lake.table).astype(np.float32)
    (label,) = session.run(["label"], {"X": x})
    own = mlflow.sklearn.load_model(ref.uri).predict(x)
    assert (label == own).mean() > 0.999  # float32 ONNX vs float64 sklearn may differ on the decision boundary


def test_a_server_that_is_not_up_fails_within_the_timeout_naming_the_url(champion):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=rf"{url}.*not ready within 2 s"):
        TritonPredictor(TritonSpec(champion.uri, "onnx_clf", champion.version, tuple(FEATURES), url, timeout_s=2))
    assert time.monotonic() - started < 10


def test_a_server_serving_another_version_is_refused(spark, lake, server):
    clf = demo.train_classifier(lake.table, FEATURES, max_iter=100)
    version = demo.register(clf, lake.table, FEATURES, name="onnx_clf", flavor="onnx")
    path = lake.root / "guarded_triton"
    run(build_job_config(lake.job("guarded_triton")), spark=spark)
    before = delta_version(path)
    tree = _triton_job(lake, "guarded_triton", server)
    tree["model"] = {"uri": f"models:/onnx_clf/{version}"}
    with pytest.raises(
        ModelError, match=rf"resolved models:/onnx_clf/{version}.*does not serve onnx_clf version {version}"
    ):
        run(build_job_config(tree), spark=spark)
    assert delta_version(path) == before


def _tritonserver_processes(repository: Path) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "tritonserver" in cmdline and str(repository) in cmdline:
            found.append(proc.info["pid"])
    return found


def test_launch_auto_starts_and_stops_its_own_sidecar(spark, lake, champion, tmp_path):
    repo = tmp_path / "auto-repo"
    tree = lake.job("auto_out", runtime={"backend": "triton", "triton": {"launch": "auto", "repository": str(repo)}})
    summary = run(build_job_config(tree), spark=spark)
    assert summary.rows_written == lake.table.num_rows
    assert (repo / "onnx_clf" / champion.version / "model.onnx").exists()
    assert _tritonserver_processes(repo) == []
    out = read_delta(lake.root / "auto_out").sort_by("customer_id")
    label, _ = _own_predict(champion.uri, lake.table.sort_by("customer_id"))
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)


def test_launch_auto_uses_a_server_that_already_serves_the_version(spark, lake, server, champion, tmp_path):
    repo = tmp_path / "not-needed"
    triton = {"launch": "auto", "url": server.grpc_url, "repository": str(repo)}
    summary = run(
        build_job_config(lake.job("auto_reuse_out", runtime={"backend": "triton", "triton": triton})), spark=spark
    )
    assert summary.rows_written == lake.table.num_rows
    assert not repo.exists()  # nothing exported, no sidecar started: the running server served it


@pytest.fixture()
def slow_server(tmp_path, champion):
    """The champion model, but each execution sleeps 50 ms and the queue holds one request: easy to overload."""
    settings = TritonModelConfig(max_batch_size=512, max_queue_size=1, max_queue_delay_us=0)
    export_model(champion, tmp_path, target="python", model_config=settings)
    model_py = tmp_path / "onnx_clf" / champion.version / "model.py"
    source = model_py.read_text().replace(
        "    def execute(self, requests):\n",
        "    def execute(self, requests):\n        import time\n\n        time.sleep(0.05)\n",
    )
    assert "time.sleep(0.05)" in source
    model_py.write_text(source)
    with triton_server.running_server(tmp_path) as handle:
        yield handle


def _batch(lake, rows):
    return pa.RecordBatch.from_pandas(lake.table.slice(0, rows).select(FEATURES).to_pandas(), preserve_index=False)


def _overloading_predictor(champion, server, max_retries: int) -> TritonPredictor:
    """Six 64-row requests in flight against a queue of one: most are rejected as overloaded at first."""
    spec = TritonSpec(
        champion.uri,
        "onnx_clf",
        champion.version,
        tuple(FEATURES),
        server.grpc_url,
        batch_rows=64,
        max_inflight=6,
        max_retries=max_retries,
        timeout_s=20,
    )
    return TritonPredictor(spec)


def test_an_overloaded_server_is_retried_with_backoff_until_it_answers(lake, champion, slow_server):
    predictor = _overloading_predictor(champion, slow_server, max_retries=30)
    try:
        out = predictor.predict(_batch(lake, 768))
    finally:
        predictor.close()
    label, _ = _own_predict(champion.uri, lake.table.slice(0, 768))
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)


def test_an_overloaded_server_without_retries_gives_a_typed_error_not_a_hang(lake, champion, slow_server):
    predictor = _overloading_predictor(champion, slow_server, max_retries=0)
    started = time.monotonic()
    try:
        with pytest.raises(
            BackendUnavailableError, match=r"onnx_clf.*gave up after 1 attempt.*Exceeds maximum queue size"
        ):
            predictor.predict(_batch(lake, 768))
    finally:
        predictor.close()
    assert time.monotonic() - started < 20


def _successes(handle) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("nv_inference_request_success")
    )


def test_a_server_killed_mid_job_fails_the_run_cleanly_and_commits_nothing(spark, lake, champion, slow_server):
    path = lake.root / "killed_out"
    run(build_job_config(lake.job("killed_out")), spark=spark)
    before, rows = delta_version(path), read_delta(path).num_rows

    def kill_after_first_request() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _successes(slow_server) < 1:
            time.sleep(0.05)
        triton_server.stop_server(slow_server, timeout_s=0.1)

    killer = threading.Thread(target=kill_after_first_request)
    tree = lake.job(
        "killed_out",
        runtime={
            "backend": "triton",
            "triton": {
                "url": slow_server.grpc_url,
                "batch_rows": 32,
                "max_inflight": 1,
                "max_retries": 1,
                "timeout_s": 3,
            },
        },
    )
    killer.start()
    try:
        with pytest.raises(BackendUnavailableError, match=re.escape(slow_server.grpc_url)):
            run(build_job_config(tree), spark=spark)
    finally:
        killer.join()
    assert delta_version(path) == before and read_delta(path).num_rows == rows
