"""``scoring serve`` with live inference through a real Triton server (``runtime.backend: triton``, ``launch:
external``): answers equal the model's own predict; concurrent requests reach Triton as fewer, larger batches (Triton's
own counters say so); the KServe v2 route answers the official ``tritonclient.http`` client (JSON and binary tensors)
as Triton itself does; and a Triton that is killed and started again: precomputed scores keep coming, live requests
get 503 with Retry-After while the breaker is open (or the embedded fallback answers), and live answers come back
without restarting the service.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
import urllib.request

import httpx
import numpy as np
import pytest

from scoring.adapters.triton_export import triton_model_name
from scoring.launchers import triton_server as ts

pytest.register_assert_rewrite("tests.integration.serve_fixtures")  # its helpers assert; imported before the plugin
from tests.integration.serve_fixtures import (  # noqa: E402
    assert_live,
    assert_record,
    feature_rows,
    kill_triton,
    matrix,
    metric,
    newest_rows,
    own_predict,
    serving,
)

pytest_plugins = ["tests.integration.serve_fixtures", "tests.integration.triton_fixtures"]


def _triton_job(served, url: str, **serve):
    return served.job(runtime={"backend": "triton", "triton": {"url": url, "launch": "external"}}, serve=serve)


@pytest.fixture(scope="module")
def tsvc(served, triton_server):
    """The module's service: the served table, live inference through the session's Triton server."""
    with serving(_triton_job(served, triton_server.grpc_url)) as s:
        yield s


@pytest.fixture(scope="module")
def rows(served):
    return feature_rows(served.features.slice(200, 64))


def test_live_answers_through_triton_equal_the_models_own_predict(tsvc, served, rows):
    model_uri = served.run_b.model_uri
    singles = [tsvc.client.post("/v1/score", json={"key": f"t{i}", "features": r}) for i, r in enumerate(rows[:4])]
    assert [r.status_code for r in singles] == [200] * 4, [r.text for r in singles]
    assert_live([r.json() for r in singles], rows[:4], model_uri)
    many = tsvc.client.post("/v1/score", json=[{"key": f"t{i}", "features": r} for i, r in enumerate(rows)])
    assert many.status_code == 200, many.text
    answers = many.json()
    assert_live(answers, rows, model_uri)
    assert {(a["backend"], a["fallback"], a["model_version"]) for a in answers} == {
        ("triton", False, served.run_b.model_version)
    }
    # precomputed scores are answered beside, from the table
    assert_record(tsvc.client.get("/v1/scores/12").json(), newest_rows(served.rows())["12"])


def _triton_counters(handle, model: str) -> tuple[float, float]:
    """Triton's own count of inference requests and of rows (inferences) for `model`."""
    text = urllib.request.urlopen(handle.metrics_url, timeout=10).read().decode()
    return (
        metric(text, "nv_inference_request_success", model=model),
        metric(text, "nv_inference_count", model=model),
    )


def test_concurrent_live_requests_reach_triton_micro_batched_and_all_correct(served, triton_server, champion):
    rows = feature_rows(served.features.slice(300, 50))
    name = triton_model_name(champion)
    with serving(_triton_job(served, triton_server.grpc_url, batch_window_ms=500)) as s:
        requests_before, rows_before = _triton_counters(triton_server, name)
        barrier = threading.Barrier(len(rows))

        def ask(i: int) -> httpx.Response:
            with httpx.Client(base_url=s.url, timeout=60) as client:
                barrier.wait()
                return client.post("/v1/score", json={"key": f"c{i}", "features": rows[i]})

        with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
            responses = list(pool.map(ask, range(len(rows))))
        assert [r.status_code for r in responses] == [200] * len(rows), [r.text for r in responses if r.is_error]
        answers = [r.json() for r in responses]
        assert [a["key"] for a in answers] == [f"c{i}" for i in range(len(rows))]
        assert {a["backend"] for a in answers} == {"triton"}
        assert_live(answers, rows, served.run_b.model_uri)
        deadline = time.monotonic() + 30  # Triton counts a request when its statistics are recorded
        while _triton_counters(triton_server, name)[1] < rows_before + len(rows) and time.monotonic() < deadline:
            time.sleep(0.05)
        requests_after, rows_after = _triton_counters(triton_server, name)
        assert rows_after - rows_before == len(rows)
        assert 1 <= requests_after - requests_before < len(rows)  # fewer backend calls than HTTP requests


# -- the KServe v2 route and the official client -------------------------------------------------------------------


def _infer(client, name: str, x: np.ndarray, *, binary: bool, outputs: bool = True):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = (
        [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probabilities")]
        if outputs
        else None
    )
    return client.infer(name, [tensor], outputs=wanted)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_gets_the_models_own_predictions_from_our_service(tsvc, served, rows, binary):
    import tritonclient.http as httpclient

    x = matrix(rows)
    label, proba = own_predict(served.run_b.model_uri, x)
    client = httpclient.InferenceServerClient(tsvc.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("onnx_clf")
        for outputs in (True, False):
            result = _infer(client, "onnx_clf", x, binary=binary, outputs=outputs)
            np.testing.assert_array_equal(result.as_numpy("label").reshape(-1), label)
            np.testing.assert_allclose(result.as_numpy("probabilities"), proba, rtol=1e-6)
            response = result.get_response()
            assert response["model_version"] == served.run_b.model_version
            sent_binary = binary or not outputs  # no outputs named: tritonclient asks for all, binary
            assert all(("binary_data_size" in o.get("parameters", {})) == sent_binary for o in response["outputs"])
    finally:
        client.close()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_same_request_to_triton_and_to_our_service_gives_the_same_outputs(
    tsvc, triton_server, champion, rows, binary
):
    import tritonclient.http as httpclient

    x = matrix(rows)
    name = triton_model_name(champion)
    ours = httpclient.InferenceServerClient(tsvc.url.removeprefix("http://"))
    theirs = httpclient.InferenceServerClient(triton_server.http_url)
    try:
        mine = _infer(ours, name, x, binary=binary)
        real = _infer(theirs, name, x, binary=binary)
    finally:
        ours.close()
        theirs.close()
    for output in ("label", "probabilities"):
        a, b = mine.as_numpy(output), real.as_numpy(output)
        assert a.dtype == b.dtype, output
        assert a.size == b.size and a.shape[0] == b.shape[0] == len(rows), (output, a.shape, b.shape)
        np.testing.assert_allclose(a.reshape(b.shape), b, rtol=1e-6)
    assert mine.as_numpy("probabilities").shape == real.as_numpy("probabilities").shape


def test_a_one_value_per_row_output_has_the_shape_triton_gives_it(tsvc, triton_server, champion, rows):
    import tritonclient.http as httpclient

    x = matrix(rows[:3])
    name = triton_model_name(champion)
    ours = httpclient.InferenceServerClient(tsvc.url.removeprefix("http://"))
    theirs = httpclient.InferenceServerClient(triton_server.http_url)
    try:
        mine, real = _infer(ours, name, x, binary=True), _infer(theirs, name, x, binary=True)
    finally:
        ours.close()
        theirs.close()
    assert real.as_numpy("label").shape == (3, 1)
    assert mine.as_numpy("label").shape == real.as_numpy("label").shape


# -- Triton killed and started again -------------------------------------------------------------------------------


def _poll(condition, timeout_s: float = 120.0, every_s: float = 0.2):
    """Call `condition` until it returns something truthy (returned) or the time is up (its last value)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


def test_a_killed_triton_keeps_precomputed_scores_refuses_live_with_retry_after_and_recovers(
    served, triton_repository, rows
):
    model_uri = served.run_b.model_uri
    expected = newest_rows(served.rows())
    server = ts.start_server(triton_repository, ready_timeout_s=120)
    again = None
    knobs = {"breaker_failures": 2, "breaker_reset_s": 0.5, "deadline_s": 5.0}
    try:
        with (
            serving(_triton_job(served, server.grpc_url, **knobs)) as plain,
            serving(_triton_job(served, server.grpc_url, live_fallback="embedded", **knobs)) as fallback,
        ):

            def live(s, i: int = 0) -> httpx.Response:
                return s.client.post("/v1/score", json={"key": f"k{i}", "features": rows[i]})

            for s in (plain, fallback):
                answer = live(s)
                assert answer.status_code == 200 and answer.json()["backend"] == "triton", answer.text

            kill_triton(server)

            # precomputed scores keep coming
            assert_record(plain.client.get("/v1/scores/30").json(), expected["30"])
            # live requests are refused with Retry-After; after breaker_failures failures the breaker is open
            refused = [live(plain, i) for i in range(3)]
            for response in refused:
                assert response.status_code == 503, response.text
                assert int(response.headers["retry-after"]) >= 1
                assert response.json()["key"].startswith("k")
            assert "circuit breaker open" in refused[-1].json()["error"]
            ready = plain.client.get("/v2/health/ready")
            assert ready.status_code == 503 and "triton" in ready.json()["reason"]
            assert_record(plain.client.get("/v1/scores/31").json(), expected["31"])
            text = plain.client.get("/metrics").text
            assert metric(text, "scoring_serve_live_events_total", event="breaker_opened", backend="triton") == 1
            assert metric(text, "scoring_serve_live_errors_total", kind="breaker_open") >= 1
            assert metric(text, "scoring_serve_live_errors_total") == 3

            # with the embedded fallback, live requests are answered in process meanwhile
            answers = [live(fallback, i) for i in range(6)]
            assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
            assert {(a.json()["backend"], a.json()["fallback"]) for a in answers} == {("embedded", True)}
            assert_live([a.json() for a in answers], rows[:6], model_uri)
            assert fallback.client.get("/v2/health/ready").status_code == 200

            # the server comes back on the same ports: live answers through Triton again, no restart of the service
            again = ts.start_server(
                triton_repository,
                http_port=server.http_port,
                grpc_port=server.grpc_port,
                metrics_port=server.metrics_port,
                ready_timeout_s=120,
            )
            for s in (plain, fallback):
                back = _poll(lambda s=s: (r := live(s, 7)).status_code == 200 and r.json()["backend"] == "triton")
                assert back, live(s, 7).text
                answer = live(s, 8).json()
                assert (answer["backend"], answer["fallback"]) == ("triton", False)
                assert_live([answer], [rows[8]], model_uri)
            assert plain.client.get("/v2/health/ready").status_code == 200
            text = plain.client.get("/metrics").text
            assert metric(text, "scoring_serve_live_events_total", event="breaker_closed", backend="triton") == 1
    finally:
        kill_triton(server)
        if again is not None:
            kill_triton(again)
