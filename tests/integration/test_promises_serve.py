"""Promises of the README's "Online serving" section and docs/serving.md that no other test proves: each test quotes its sentence and
checks it against a real service (real HTTP on loopback, the batch job's real Delta output, a real MLflow registry),
or the real ``scoring serve`` command."""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import yaml

from scoring.tools import demo
from tests.integration.conftest import FEATURES, delta_version, read_delta

pytest.register_assert_rewrite("tests.integration.serve_fixtures")
from tests.integration.serve_fixtures import (  # noqa: E402
    assert_record,
    feature_rows,
    metric,
    newest_rows,
    serving,
)

pytest_plugins = ["tests.integration.serve_fixtures"]

SCORING = [sys.executable, "-m", "scoring.cli"]


@pytest.fixture(scope="module")
def svc(served):
    """One service over the served table (embedded live inference), started once for the cheap promises."""
    before = time.time()
    with serving(served.job()) as s:
        s.started = (before, time.time())
        yield s


# -- routes --------------------------------------------------------------------------------------------------------


def test_a_key_holding_a_slash_is_answered_by_post_only_and_a_get_for_it_is_a_404_naming_the_key(served, tmp_path):
    """docs/serving.md, Routes: "a key value holding `/` can only be asked through `POST /v1/score`"; GET /v1/scores/{key}:
    "404 with the reason when there is none"."""
    rows = served.rows().slice(0, 3)
    keys = ["a/b", "plain", "x/y/z"]
    rows = rows.set_column(rows.schema.get_field_index("customer_id"), "customer_id", pa.array(keys, pa.string()))
    table = tmp_path / "slashed"
    demo.write_delta(table, rows)
    expected = newest_rows(read_delta(table))
    with serving(served.job(str(table))) as s:
        assert_record(s.client.get("/v1/scores/plain").json(), expected["plain"])  # the table is served
        for key in ("a/b", "x/y/z"):
            posted = s.client.post("/v1/score", json={"key": key})
            assert posted.status_code == 200, posted.text
            assert posted.json()["key"] == key
            assert_record(posted.json(), expected[key])
            for path in (f"/v1/scores/{key}", "/v1/scores/" + key.replace("/", "%2F")):
                got = s.client.get(path)
                assert got.status_code == 404, (path, got.text)
                assert got.json()["field"] == "key", got.json()
                assert f"the path gives {key.count('/') + 1}" in got.json()["error"], got.json()


def test_get_v2_is_kserve_server_metadata_that_tritonclient_reads(svc):
    """docs/serving.md, Routes: "`GET /v2/models/{name}[/ready]` and `GET /v2` for the client's metadata calls"
    (`tritonclient.http` works unchanged)."""
    import tritonclient.http as triton_http

    raw = svc.client.get("/v2")
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    client = triton_http.InferenceServerClient(url=svc.url.removeprefix("http://"))
    try:
        metadata = client.get_server_metadata()
        assert client.is_server_live() and client.is_server_ready()
        model = client.get_model_metadata(svc.service.model.name)
    finally:
        client.close()
    assert metadata == raw.json()
    assert set(metadata) == {"name", "version", "extensions"}
    assert isinstance(metadata["name"], str) and metadata["name"]
    assert isinstance(metadata["version"], str) and metadata["version"]
    assert isinstance(metadata["extensions"], list) and all(isinstance(e, str) for e in metadata["extensions"])
    assert "binary_tensor_data" in metadata["extensions"]  # binary tensors are read and written
    assert model["name"] == svc.service.model.name and model["versions"] == [svc.service.model.version]


def test_metrics_expose_requests_in_flight_and_when_the_index_was_built(svc):
    """docs/serving.md, Routes, GET /metrics: "`scoring_serve_in_flight`, ..., `_index_built_timestamp_seconds` (age: now
    minus it)"."""
    for key in (1, 2, 3):
        assert svc.client.get(f"/v1/scores/{key}").status_code == 200
    assert svc.client.post("/v1/score", json={"key": "nobody"}).status_code == 404
    text = svc.client.get("/metrics").text
    # the scrape itself is the one request being answered: the earlier ones came and went
    assert metric(text, "scoring_serve_in_flight") == 1
    assert metric(svc.client.get("/metrics").text, "scoring_serve_in_flight") == 1
    built = metric(text, "scoring_serve_index_built_timestamp_seconds")
    started, up = svc.started
    assert started <= built <= up  # built while the service started, as a Unix time in seconds
    assert 0 <= time.time() - built  # the age


def test_docs_serve_the_openapi_page_and_openapi_json_lists_the_routes(svc):
    """docs/serving.md, Routes: "`GET /docs`: the OpenAPI page"."""
    page = svc.client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "swagger" in page.text.lower() and "/openapi.json" in page.text
    spec = svc.client.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    expected = {
        "/v1/scores/{key}": "get",
        "/v1/score": "post",
        "/v1/status": "get",
        "/v2": "get",
        "/v2/models/{name}": "get",
        "/v2/models/{name}/versions/{version}": "get",
        "/v2/models/{name}/ready": "get",
        "/v2/models/{name}/versions/{version}/ready": "get",
        "/v2/models/{name}/infer": "post",
        "/v2/models/{name}/versions/{version}/infer": "post",
        "/v2/health/live": "get",
        "/v2/health/ready": "get",
        "/metrics": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), (path, sorted(paths))


# -- refresh -------------------------------------------------------------------------------------------------------


def test_a_failed_refresh_keeps_the_old_index_answering_and_v1_status_says_why(served, tmp_path):
    """docs/serving.md, Precomputed scores: "A failed refresh keeps the old index and says why in `/v1/status`"; Routes:
    "`GET /v1/status`: the model version served, the alias, the table and its version, the last refresh error"."""
    output = tmp_path / "scores"
    shutil.copytree(served.output_table, output)
    before = delta_version(output)
    expected = newest_rows(read_delta(output))
    with serving(served.job(str(output), serve={"refresh_interval_s": 0.1})) as s:
        status = s.client.get("/v1/status").json()
        assert status["requested_model_uri"] == "models:/onnx_clf@champion"  # the alias
        assert status["model_version"] == served.run_b.model_version
        assert (status["table"], status["table_version"], status["index_error"]) == (str(output), before, None)

        # a new version whose data file is gone: the table can be opened, its rows cannot be read
        files = {p.relative_to(output) for p in output.rglob("*.parquet")}
        demo.write_delta(output, read_delta(output).slice(0, 5), mode="append")
        (added,) = {p.relative_to(output) for p in output.rglob("*.parquet")} - files
        (output / added).unlink()
        assert delta_version(output) == before + 1

        deadline = time.monotonic() + 60
        while s.client.get("/v1/status").json()["index_error"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        status = s.client.get("/v1/status").json()
        assert status["index_error"] is not None and added.name in status["index_error"], status
        assert status["table_version"] == before and status["model_version"] == served.run_b.model_version
        for key in ("0", "7", "999"):
            answer = s.client.get(f"/v1/scores/{key}")
            assert answer.status_code == 200, answer.text
            assert_record(answer.json(), expected[key])
        assert metric(s.client.get("/metrics").text, "scoring_serve_index_table_version") == before


# -- the command ---------------------------------------------------------------------------------------------------


def _read_until(stream, pattern: str, timeout_s: float = 120) -> tuple[re.Match | None, str]:
    """Lines of `stream` until one matches `pattern` (on a thread: a blocked read cannot hang the test)."""
    seen: list[str] = []
    found: list[re.Match] = []
    done = threading.Event()

    def read() -> None:
        for line in stream:
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                found.append(match)
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout_s)
    return (found[0] if found else None), "".join(seen)


def test_the_serve_commands_host_and_port_options_override_serve_host_and_port(served, tmp_path):
    """docs/serving.md, The serve: section: "host: 127.0.0.1 # --host overrides it", "port: 8080 # --port overrides it;
    0 = any free port". The config names an address this machine does not have and a port that is taken: only the
    options make the service listen."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "serve.yaml"
        config.write_text(yaml.safe_dump(served.job(serve={"host": "192.0.2.1", "port": port})))
        proc = subprocess.Popen(
            [*SCORING, "serve", str(config), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            match, before = _read_until(proc.stderr, r"on http://127\.0\.0\.1:(\d+)")
            assert match is not None, before
            assert int(match.group(1)) not in (0, port)
            url = f"http://127.0.0.1:{match.group(1)}"
            assert httpx.get(f"{url}/v2/health/live", timeout=30).status_code == 200
            proc.send_signal(signal.SIGTERM)
            _, rest = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, rest
    assert "192.0.2.1" not in before + rest and "Traceback" not in before + rest


# -- live batching and the deadline --------------------------------------------------------------------------------

SLOW = 123.25
"""An f00 value the recording model answers slowly (it sleeps SLOW_S before answering)."""
SLOW_S = 2.0


def _recording_model(name: str, calls: Path, sample: pa.Table) -> str:
    """A real pyfunc model (defined inline, so it pickles by value) that appends the number of rows of every call
    to `calls`, sleeps SLOW_S when a row's f00 is SLOW, and predicts 2 * f00."""
    import mlflow
    from mlflow.models import infer_signature

    log = str(calls)
    slow, slow_s = SLOW, SLOW_S

    with warnings.catch_warnings():  # MLflow asks a predict without type hints for them, once, at class creation
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method", category=UserWarning)

        class RowsPerCall(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                import time as _time

                with open(log, "a") as f:
                    f.write(f"{len(model_input)}\n")
                if (model_input["f00"] == slow).any():
                    _time.sleep(slow_s)
                return model_input["f00"].to_numpy() * 2.0

    x = sample.select(FEATURES).to_pandas()
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=RowsPerCall(),
            registered_model_name=name,
            signature=infer_signature(x, x["f00"].to_numpy() * 2.0),
            pip_requirements=["mlflow"],
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="module")
def recording(served, tmp_path_factory):
    calls = tmp_path_factory.mktemp("calls") / "rows_per_call.txt"
    name = "serve_rows_per_call"
    version = _recording_model(name, calls, served.features.slice(0, 50))
    return name, version, calls


def _calls(path: Path, since: int) -> list[int]:
    lines = path.read_text().split() if path.exists() else []
    return [int(n) for n in lines[since:]]


def _seen(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


CAP = 4


def test_concurrent_live_requests_reach_the_backend_in_calls_of_at_most_max_batch_rows(served, recording):
    """docs/serving.md, The serve: section: "max_batch_rows: 512 # most rows per backend call"; Live inference:
    "Concurrent live requests wait at most `batch_window_ms` and go to the backend as one batch (at most
    `max_batch_rows` rows)"."""
    name, version, calls = recording
    rows = feature_rows(served.features.slice(0, 24))
    tree = served.job(model={"uri": f"models:/{name}/{version}"}, serve={"max_batch_rows": CAP, "batch_window_ms": 200})
    with serving(tree) as s:
        since = _seen(calls)
        barrier = threading.Barrier(len(rows))

        def ask(i: int) -> httpx.Response:
            with httpx.Client(base_url=s.url, timeout=60) as client:
                barrier.wait()
                return client.post("/v1/score", json={"key": f"new-{i}", "features": rows[i]})

        with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
            responses = list(pool.map(ask, range(len(rows))))
        assert [r.status_code for r in responses] == [200] * len(rows), [r.text for r in responses if r.is_error]
        assert [r.json()["predictions"]["prediction"] for r in responses] == pytest.approx([2 * r["f00"] for r in rows])
        made = _calls(calls, since)
    assert sum(made) == len(rows), made
    assert max(made) <= CAP, made


def test_a_live_request_of_more_rows_than_max_batch_rows_reaches_the_backend_in_calls_of_at_most_that(
    served, recording
):
    """docs/serving.md, The serve: section: "max_batch_rows: 512 # most rows per backend call"."""
    name, version, calls = recording
    rows = feature_rows(served.features.slice(0, 3 * CAP + 1))
    tree = served.job(model={"uri": f"models:/{name}/{version}"}, serve={"max_batch_rows": CAP})
    with serving(tree) as s:
        since = _seen(calls)
        answer = s.client.post("/v1/score", json=[{"key": f"new-{i}", "features": r} for i, r in enumerate(rows)])
        assert answer.status_code == 200, answer.text
        assert [a["predictions"]["prediction"] for a in answer.json()] == pytest.approx([2 * r["f00"] for r in rows])
        made = _calls(calls, since)
    assert sum(made) == len(rows), made
    assert max(made) <= CAP, made


def test_a_backend_call_slower_than_deadline_s_is_a_503_with_retry_after(served, recording):
    """docs/serving.md, The serve: section: "deadline_s: 1.0 # a live call longer than this is a 503"; Routes: "503 with
    `Retry-After` when live inference cannot answer"."""
    name, version, calls = recording
    row = feature_rows(served.features.slice(0, 1))[0]
    tree = served.job(model={"uri": f"models:/{name}/{version}"}, serve={"deadline_s": 0.3})
    with serving(tree) as s:
        fast = s.client.post("/v1/score", json={"key": "fast", "features": row})
        assert fast.status_code == 200, fast.text
        since = _seen(calls)
        slow = s.client.post("/v1/score", json={"key": "slow", "features": {**row, "f00": SLOW}})
        assert slow.status_code == 503, slow.text
        assert int(slow.headers["retry-after"]) >= 1
        assert "deadline" in slow.json()["error"] and slow.json()["key"] == "slow"
        assert _calls(calls, since) == [1]  # the backend was called: the call was slow, not refused
        text = s.client.get("/metrics").text
        assert metric(text, "scoring_serve_live_errors_total", kind="deadline") == 1
