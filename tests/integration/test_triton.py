"""The triton backend against a real Triton Inference Server process (the tritonserver binary bundled in the
nvidia-pytriton wheel, Python backend), real Spark, Delta and MLflow.

The predictor-level contract every backend passes is in test_predictor_contract.py; here: whole jobs through each
transport, the export, and failures injected at the real server (overload, unknown version, wrong request size,
unloaded model, killed server), each checked for its type: transient failures are retried and end as
`BackendUnavailableError` (exit 75), terminal ones are a `ModelError` (exit 1) at once.
"""

from __future__ import annotations

import logging
import os
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

from scoring import build_job_config, run
from scoring.adapters.registry import resolve_model
from scoring.adapters.triton import TritonPredictor, TritonSpec
from scoring.adapters.triton_export import export_model, triton_model_name
from scoring.config import TritonModelConfig
from scoring.errors import EXIT_TERMINAL, EXIT_TRANSIENT, BackendUnavailableError, ModelError, exit_code_for
from scoring.launchers import triton_server as ts
from scoring.tools import demo
from tests.integration.conftest import FEATURES, delta_version, features_of, read_delta

pytest_plugins = ["tests.integration.triton_fixtures"]  # champion, triton_repository, triton_server (one a session)


def _own_predict(model_uri: str, table: pa.Table):
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(model_uri).SerializeToString())
    return session.run(["label", "probabilities"], {"X": features_of(table).astype(np.float32)})


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
def test_every_runtime_writes_the_models_own_predictions_through_a_whole_job(
    spark, lake, triton_server, champion, backend
):
    """A whole job (Spark, Delta) through each runtime: same rows in, the model's own predictions written."""
    triton = BACKENDS[backend]
    output = f"contract_{backend.replace('-', '_')}"
    tree = lake.job(output) if triton is None else _triton_job(lake, output, triton_server, **triton)
    summary = run(build_job_config(tree), spark=spark)
    assert summary.model_version == champion.version and summary.backend == ("embedded" if triton is None else "triton")
    out = read_delta(lake.root / output).sort_by("customer_id")
    label, proba = _own_predict(champion.uri, lake.table.sort_by("customer_id"))
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    np.testing.assert_allclose(np.stack(out.column("probabilities").to_numpy(zero_copy_only=False)), proba, rtol=1e-6)
    assert summary.rows_written == lake.table.num_rows


def test_the_python_target_config_parses_and_pins_the_version(triton_repository, champion):
    from tritonclient.grpc import model_config_pb2 as mc

    repository = triton_repository
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


def test_a_server_serving_another_version_is_refused(spark, lake, triton_server):
    clf = demo.train_classifier(lake.table, FEATURES, max_iter=100)
    version = demo.register(clf, lake.table, FEATURES, name="onnx_clf", flavor="onnx")
    path = lake.root / "guarded_triton"
    run(build_job_config(lake.job("guarded_triton")), spark=spark)
    before = delta_version(path)
    tree = _triton_job(lake, "guarded_triton", triton_server)
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


def test_launch_auto_uses_a_server_that_already_serves_the_version(spark, lake, triton_server, champion, tmp_path):
    repo = tmp_path / "not-needed"
    triton = {"launch": "auto", "url": triton_server.grpc_url, "repository": str(repo)}
    summary = run(
        build_job_config(lake.job("auto_reuse_out", runtime={"backend": "triton", "triton": triton})), spark=spark
    )
    assert summary.rows_written == lake.table.num_rows
    assert not repo.exists()  # nothing exported, no sidecar started: the running server served it


SLOW_MAX_BATCH = 512


def _slow_repository(directory: Path, champion, max_queue_size: int = 1) -> Path:
    """The champion model, but each execution sleeps 50 ms, the queue holds one request and a request may carry at
    most 512 rows: easy to overload, easy to send too much."""
    settings = TritonModelConfig(max_batch_size=SLOW_MAX_BATCH, max_queue_size=max_queue_size, max_queue_delay_us=0)
    export_model(champion, directory, target="python", model_config=settings)
    model_py = directory / "onnx_clf" / champion.version / "model.py"
    source = model_py.read_text().replace(
        "    def execute(self, requests):\n",
        "    def execute(self, requests):\n        import time\n\n        time.sleep(0.05)\n",
    )
    assert "time.sleep(0.05)" in source
    model_py.write_text(source)
    return directory


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory, champion):
    """One slow server for the module, in explicit model-control mode (a test unloads and reloads the model)."""
    repo = _slow_repository(tmp_path_factory.mktemp("slow-repository"), champion)
    with ts.running_server(repo, models=[triton_model_name(champion)]) as handle:
        yield handle


@pytest.fixture()
def doomed_server(tmp_path, champion):
    """A slow server of its own, for a test that kills it."""
    with ts.running_server(_slow_repository(tmp_path, champion)) as handle:
        yield handle


def _backend_regions(handle) -> list[Path]:
    """The shared-memory regions the server made for its Python-backend stubs (named on the stubs' command lines)."""
    import psutil

    regions = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) != handle.pid:
                continue
        except OSError:
            continue
        regions += [
            Path("/dev/shm") / a for a in proc.info["cmdline"] or () if a.startswith("triton_python_backend_shm")
        ]
    return regions


def kill(handle) -> None:
    """Kill the server (SIGTERM, then SIGKILL to its process group at once), and remove the shared-memory regions its
    Python backend had made: a killed server cannot, and they would stay in /dev/shm."""
    regions = _backend_regions(handle)
    ts.stop_server(handle, timeout_s=0)
    for region in regions:
        region.unlink(missing_ok=True)


def _batch(lake, rows):
    return pa.RecordBatch.from_pandas(lake.table.slice(0, rows).select(FEATURES).to_pandas(), preserve_index=False)


def _url(handle, protocol: str) -> str:
    return handle.grpc_url if protocol == "grpc" else handle.http_url


def _predictor(champion, handle, protocol: str = "grpc", **options) -> TritonPredictor:
    spec = TritonSpec(
        champion.uri,
        triton_model_name(champion),
        champion.version,
        tuple(FEATURES),
        _url(handle, protocol),
        protocol=protocol,
        **{"timeout_s": 20, **options},
    )
    return TritonPredictor(spec)


def _overloading_predictor(champion, server, max_retries: int, protocol: str = "grpc") -> TritonPredictor:
    """Six 64-row requests in flight against a queue of one: most are rejected as overloaded at first."""
    return _predictor(champion, server, protocol, batch_rows=64, max_inflight=6, max_retries=max_retries)


def _retries(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "scoring.adapters.triton" and "transient failure" in r.getMessage()]


def _status_of(error: BaseException) -> str | None:
    """The status tritonclient attached to the exception at the bottom of `error`'s chain."""
    while error.__cause__ is not None:
        error = error.__cause__
    status = getattr(error, "status", None)
    return status() if callable(status) else None


def _root(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def test_an_overloaded_server_is_retried_with_backoff_until_it_answers(lake, champion, slow_server, caplog):
    predictor = _overloading_predictor(champion, slow_server, max_retries=30)
    try:
        with caplog.at_level(logging.WARNING, logger="scoring.adapters.triton"):
            out = predictor.predict(_batch(lake, 768))
    finally:
        predictor.close()
    label, _ = _own_predict(champion.uri, lake.table.slice(0, 768))
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    assert _retries(caplog), "no request was refused: the server was not overloaded"


@pytest.mark.parametrize(("protocol", "status"), [("grpc", "StatusCode.UNAVAILABLE"), ("http", "503")])
def test_an_overloaded_server_without_retries_gives_a_typed_transient_error_not_a_hang(
    lake, champion, slow_server, protocol, status
):
    predictor = _overloading_predictor(champion, slow_server, max_retries=0, protocol=protocol)
    try:
        with pytest.raises(
            BackendUnavailableError, match=r"onnx_clf.*gave up after 1 attempt.*Exceeds maximum queue size"
        ) as excinfo:
            predictor.predict(_batch(lake, 768))
    finally:
        predictor.close()
    error = excinfo.value
    assert exit_code_for(error) == EXIT_TRANSIENT
    assert _url(slow_server, protocol) in str(error) and f"version {champion.version}" in str(error)
    assert isinstance(error.__cause__, BackendUnavailableError)  # the attempt's own error, from the client call
    assert _status_of(error) == status


@pytest.mark.parametrize(("protocol", "status"), [("grpc", "StatusCode.INVALID_ARGUMENT"), ("http", "400")])
def test_a_request_above_the_models_max_batch_size_is_a_model_error_at_once(
    lake, champion, slow_server, caplog, protocol, status
):
    predictor = _predictor(champion, slow_server, protocol, batch_rows=SLOW_MAX_BATCH + 88, max_retries=5)
    try:
        with caplog.at_level(logging.WARNING, logger="scoring.adapters.triton"):
            with pytest.raises(ModelError, match=rf"batch-size must be <= {SLOW_MAX_BATCH}") as excinfo:
                predictor.predict(_batch(lake, SLOW_MAX_BATCH + 88))
    finally:
        predictor.close()
    error = excinfo.value
    assert exit_code_for(error) == EXIT_TERMINAL
    assert f"model onnx_clf version {champion.version} at {_url(slow_server, protocol)}" in str(error)
    assert _status_of(error) == status and error.__cause__ is _root(error)  # straight from tritonclient
    assert not _retries(caplog)


def _wait_unloaded(admin, name: str, timeout_s: float = 60.0) -> None:
    """Until the server's repository index no longer shows `name` ready, loading or unloading."""
    deadline = time.monotonic() + timeout_s
    while any(
        m["name"] == name and m.get("state") in ("READY", "LOADING", "UNLOADING")
        for m in admin.get_model_repository_index()
    ):
        assert time.monotonic() < deadline, f"{name} still not unloaded after {timeout_s:g} s"
        time.sleep(0.2)


@pytest.mark.parametrize(("protocol", "status"), [("grpc", "StatusCode.UNAVAILABLE"), ("http", "503")])
def test_a_model_unloaded_mid_job_is_unavailable_so_retried_then_a_transient_error(
    lake, champion, slow_server, caplog, protocol, status
):
    """The server answers a request for an unloaded (pinned) version with UNAVAILABLE / 503, "not at ready state",
    as it does while the version loads: the predictor retries, gives up typed as transient, and works again once the
    model is back."""
    import tritonclient.http as httpclient

    name = triton_model_name(champion)
    predictor = _predictor(champion, slow_server, protocol, max_retries=1)
    admin = httpclient.InferenceServerClient(slow_server.http_url)
    try:
        predictor.predict(_batch(lake, 10))
        admin.unload_model(name)
        _wait_unloaded(admin, name)
        caplog.clear()  # count the retries of the next call only
        with caplog.at_level(logging.WARNING, logger="scoring.adapters.triton"):
            with pytest.raises(BackendUnavailableError, match="gave up after 2 attempt.*not at ready state") as excinfo:
                predictor.predict(_batch(lake, 10))
        admin.load_model(name)
        assert predictor.predict(_batch(lake, 10)).num_rows == 10
    finally:
        predictor.close()
        if not ts.model_ready(slow_server, name):
            admin.load_model(name)  # the module's other tests use it
        admin.close()
    assert exit_code_for(excinfo.value) == EXIT_TRANSIENT
    assert _status_of(excinfo.value) == status
    assert len(_retries(caplog)) == 1


@pytest.mark.parametrize(("protocol", "status"), [("grpc", "StatusCode.NOT_FOUND"), ("http", "404")])
def test_an_unknown_model_or_version_is_a_terminal_error_where_the_client_raises_it(
    champion, triton_server, protocol, status
):
    """What the predictor's readiness check normally catches first, asked of the real server at the client boundary."""
    import numpy as np

    from scoring.adapters.triton import _Client

    spec = TritonSpec(
        champion.uri, "onnx_clf", champion.version, tuple(FEATURES), _url(triton_server, protocol), protocol
    )
    client = _Client(spec)
    try:
        with pytest.raises(ModelError, match=r"version 999 is not found") as unknown_version:
            client.call("get_model_metadata", "onnx_clf", "999")
        inp = client.mod.InferInput("X", [2, len(FEATURES)], "FP32")
        inp.set_data_from_numpy(np.zeros((2, len(FEATURES)), np.float32))
        with pytest.raises(ModelError, match=r"unknown model: 'no_such_model'") as unknown_model:
            client.call("infer", "no_such_model", [inp])
    finally:
        client.close()
    for error in (unknown_version.value, unknown_model.value):
        assert exit_code_for(error) == EXIT_TERMINAL
        assert _status_of(error) == status and _url(triton_server, protocol) in str(error)


def test_a_version_the_server_does_not_serve_is_a_model_error_when_the_predictor_is_made(champion, triton_server):
    spec = TritonSpec(champion.uri, "onnx_clf", "999", tuple(FEATURES), triton_server.grpc_url, timeout_s=20)
    with pytest.raises(ModelError, match=r"does not serve onnx_clf version 999 \(served: onnx_clf/") as excinfo:
        TritonPredictor(spec)
    assert exit_code_for(excinfo.value) == EXIT_TERMINAL


def test_a_killed_server_is_a_transient_failure_over_both_protocols(lake, champion, doomed_server, caplog):
    predictors = {p: _predictor(champion, doomed_server, p, max_retries=1, timeout_s=3) for p in ("grpc", "http")}
    errors = {}
    try:
        for predictor in predictors.values():
            assert predictor.predict(_batch(lake, 10)).num_rows == 10
        kill(doomed_server)
        with caplog.at_level(logging.WARNING, logger="scoring.adapters.triton"):
            for protocol, predictor in predictors.items():
                with pytest.raises(BackendUnavailableError, match="gave up after 2 attempt") as excinfo:
                    predictor.predict(_batch(lake, 10))
                errors[protocol] = excinfo.value
    finally:
        for predictor in predictors.values():
            predictor.close()
    assert all(exit_code_for(e) == EXIT_TRANSIENT for e in errors.values())
    assert _status_of(errors["grpc"]) == "StatusCode.UNAVAILABLE"
    assert isinstance(_root(errors["http"]), ConnectionRefusedError)
    assert len(_retries(caplog)) == 2  # one retry each


def test_a_server_restarted_between_batches_gets_its_shared_memory_regions_registered_again(lake, champion, tmp_path):
    """The clients reconnect by themselves, but the new server knows none of the old regions (NOT_FOUND / 404): the
    predictor asks the server which regions it has, and registers its own again instead of failing the job."""
    repo = _slow_repository(tmp_path, champion)
    first = ts.start_server(repo)
    second = None
    predictors = {p: _predictor(champion, first, p, shared_memory="system", max_retries=2) for p in ("grpc", "http")}
    try:
        before = {p: predictor.predict(_batch(lake, 100)) for p, predictor in predictors.items()}
        kill(first)
        second = ts.start_server(
            repo, http_port=first.http_port, grpc_port=first.grpc_port, metrics_port=first.metrics_port
        )
        for protocol, predictor in predictors.items():
            after = predictor.predict(_batch(lake, 100))
            assert after.equals(before[protocol]), protocol
    finally:
        for predictor in predictors.values():
            predictor.close()
        ts.stop_server(first)
        if second is not None:
            ts.stop_server(second)


def _successes(handle) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{handle.metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("nv_inference_request_success")
    )


def test_a_server_killed_mid_job_fails_the_run_cleanly_and_commits_nothing(spark, lake, champion, doomed_server):
    slow_server = doomed_server
    path = lake.root / "killed_out"
    run(build_job_config(lake.job("killed_out")), spark=spark)
    before, rows = delta_version(path), read_delta(path).num_rows

    def kill_after_first_request() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _successes(slow_server) < 1:
            time.sleep(0.05)
        kill(slow_server)

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


# -- requests in flight across Arrow batches (predict_stream) --------------------------------------------------------

STREAM_SIZES = (100, 0, 1, 257, 64, 500, 3)
"""Arrow batch sizes of a task's stream: empty, one-row, several requests of 64 rows each, one partial request."""


def _stream_batches(lake, sizes=STREAM_SIZES) -> list[pa.RecordBatch]:
    """Consecutive slices of the lake's rows, `sizes` rows each."""
    frame = lake.table.select(FEATURES).to_pandas()
    starts = np.cumsum((0, *sizes))[:-1]
    assert starts[-1] + sizes[-1] <= len(frame)
    return [
        pa.RecordBatch.from_pandas(frame.iloc[s : s + n], preserve_index=False)
        for s, n in zip(starts, sizes, strict=True)
    ]


class _Taken:
    """An input stream that counts the batches taken from it."""

    def __init__(self, batches) -> None:
        self.batches, self.taken = list(batches), 0

    def __iter__(self):
        for batch in self.batches:
            self.taken += 1
            yield batch


@pytest.mark.parametrize(
    "transport",
    [
        ("grpc", "none"),
        ("http", "none"),
        ("grpc", "system"),
        ("http", "system"),
    ],
    ids=["grpc", "http", "grpc-shm", "http-shm"],
)
def test_a_stream_with_requests_in_flight_across_batches_gives_the_models_own_predictions_in_order(
    lake, champion, triton_server, transport
):
    """Three requests of 64 rows in flight across seven batches (each of the HTTP client's and of the shared-memory
    regions one per request in flight): every batch's own predictions, in input order, empty and one-row included."""
    batches = _stream_batches(lake)
    protocol, shared_memory = transport
    predictor = _predictor(
        champion, triton_server, protocol, shared_memory=shared_memory, batch_rows=64, max_inflight=3
    )
    try:
        out = list(predictor.predict_stream(batches))
    finally:
        predictor.close()
    assert [o.num_rows for o in out] == list(STREAM_SIZES)
    label, proba = _own_predict(champion.uri, lake.table.slice(0, sum(STREAM_SIZES)))
    np.testing.assert_array_equal(np.concatenate([o.column("label").to_numpy() for o in out]), label)
    got = np.concatenate([np.stack(o.column("probabilities").to_numpy(zero_copy_only=False)) for o in out if len(o)])
    np.testing.assert_allclose(got, proba, rtol=1e-6)


def test_a_stream_takes_no_more_batches_than_it_has_requests_in_flight(lake, champion, slow_server):
    source = _Taken(_stream_batches(lake, [50] * 40))
    predictor = _predictor(champion, slow_server, batch_rows=50, max_inflight=2, max_retries=30)
    try:
        stream = predictor.predict_stream(source)
        next(stream)
        taken_first = source.taken
        for _ in range(3):
            next(stream)
        assert taken_first <= 3 and source.taken <= 3 + 3  # two held, one converting; one more per batch given
        stream.close()
    finally:
        predictor.close()


def test_a_request_failing_in_the_middle_of_a_stream_fails_at_its_batch_naming_the_server_and_the_batch(
    lake, champion, slow_server
):
    """The third batch is larger than the model's max_batch_size, so the server refuses its request
    (INVALID_ARGUMENT): the two batches before it are given, then a ModelError naming the batch and the server."""
    sizes = [100, 100, SLOW_MAX_BATCH + 10, 100, 100]
    predictor = _predictor(champion, slow_server, batch_rows=SLOW_MAX_BATCH + 10, max_inflight=3, max_retries=30)
    got = []
    try:
        with pytest.raises(ModelError) as excinfo:
            for out in predictor.predict_stream(_stream_batches(lake, sizes)):
                got.append(out)
    finally:
        predictor.close()
    message = str(excinfo.value)
    assert message.startswith(f"Arrow batch 3 of this task: model onnx_clf version {champion.version}")
    assert slow_server.grpc_url in message and f"batch-size must be <= {SLOW_MAX_BATCH}" in message
    assert [o.num_rows for o in got] == [100, 100]
    assert exit_code_for(excinfo.value) == EXIT_TERMINAL and _status_of(excinfo.value) == "StatusCode.INVALID_ARGUMENT"


def test_closing_a_stream_early_leaves_no_request_in_flight_and_closing_the_predictor_no_thread(
    lake, champion, slow_server
):
    threads_before = set(threading.enumerate())
    predictor = _predictor(champion, slow_server, batch_rows=50, max_inflight=4, max_retries=30)
    stream = predictor.predict_stream(_stream_batches(lake, [50] * 40))
    next(stream)
    before = _successes(slow_server)
    stream.close()  # waits for the requests in flight; the ones not sent are never sent
    after_close = _successes(slow_server)
    time.sleep(0.3)  # a request left running would land meanwhile
    assert _successes(slow_server) == after_close and after_close - before <= 4
    threads = [t for t in set(threading.enumerate()) - threads_before if t.name.startswith("triton")]
    assert threads  # the predictor's request threads, idle now
    predictor.close()
    for thread in threads:
        thread.join(timeout=10)
    assert not [t for t in threads if t.is_alive()]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_killed_mid_stream_fails_at_the_first_unanswered_batch_after_the_ones_before_it(
    lake, champion, tmp_path, protocol
):
    """Killed with requests of several batches in flight (a slow model whose queue holds them all): the batches
    answered before are given, in order and right; then a transient error naming the server and the batch; nothing is
    left running."""
    doomed_server = ts.start_server(_slow_repository(tmp_path, champion, max_queue_size=16))
    batches = _stream_batches(lake, [40] * 30)
    predictor = _predictor(champion, doomed_server, protocol, batch_rows=40, max_inflight=3, max_retries=1, timeout_s=3)
    got = []
    try:
        stream = predictor.predict_stream(batches)
        got.append(next(stream))
        kill(doomed_server)
        with pytest.raises(BackendUnavailableError) as excinfo:
            for out in stream:
                got.append(out)
        assert predictor._pool._work_queue.empty()  # nothing waits to be sent
    finally:
        predictor.close()
        ts.stop_server(doomed_server)
    message = str(excinfo.value)
    assert re.match(rf"Arrow batch {len(got) + 1} of this task: ", message), message
    assert _url(doomed_server, protocol) in message and "gave up after" in message
    assert exit_code_for(excinfo.value) == EXIT_TRANSIENT
    label, _ = _own_predict(champion.uri, lake.table.slice(0, 40 * len(got)))
    np.testing.assert_array_equal(np.concatenate([o.column("label").to_numpy() for o in got]), label)
