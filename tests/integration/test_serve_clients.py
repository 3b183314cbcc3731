"""``scoring serve``: one client never hurts another (issue 17, section 3), tried as an adversary would, against a
real service on loopback, each outcome read with a separate HTTP client (httpx, or raw sockets)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import httpx
import orjson
import pytest

from tests.integration.conftest import FEATURES

pytest.register_assert_rewrite("tests.integration.serve_fixtures")
from tests.integration.serve_fixtures import (  # noqa: E402
    assert_live,
    feature_rows,
    metric,
    serving,
)

pytest_plugins = ["tests.integration.serve_fixtures"]

BREAKER_FAILURES = 3


@pytest.fixture(scope="module")
def svc(served):
    with serving(served.job(serve={"breaker_failures": BREAKER_FAILURES, "max_batch_keys": 1000})) as s:
        yield s


def _beyond_float32(key: str = "x") -> bytes:
    features = ", ".join(f'"{f}": {"1e39" if i == 1 else "0.5"}' for i, f in enumerate(FEATURES))
    return f'{{"key": "{key}", "features": {{{features}}}}}'.encode()


def test_a_value_beyond_float32_is_a_422_for_that_client_and_never_opens_the_breaker(svc, served):
    for _ in range(BREAKER_FAILURES * 4):
        response = svc.client.post("/v1/score", content=_beyond_float32(), headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == FEATURES[1] and "beyond float32" in response.json()["error"]
    assert svc.client.get("/v2/health/ready").status_code == 200
    rows = feature_rows(served.features.slice(0, 3))
    answers = [svc.client.post("/v1/score", json={"key": f"k{i}", "features": r}).json() for i, r in enumerate(rows)]
    assert_live(answers, rows, svc.service.model.uri)
    assert metric(svc.client.get("/metrics").text, "scoring_serve_live_events", event="breaker_opened") == 0


def test_valid_items_sharing_requests_and_micro_batches_with_bad_ones_are_all_answered(svc, served):
    rows = feature_rows(served.features.slice(0, 99))
    bad = orjson.loads(_beyond_float32("bad"))

    def one_list(round_: int) -> tuple[list[dict], list[dict]]:
        items = [{"key": f"live-{round_}-{i}", "features": r} for i, r in enumerate(rows)]
        items.insert(round_ % 100, bad)
        with httpx.Client(base_url=svc.url, timeout=60) as client:
            response = client.post("/v1/score", json=items)
            assert response.status_code == 200, response.text
            return response.json(), items

    def single_bad() -> int:
        with httpx.Client(base_url=svc.url, timeout=60) as client:
            return client.post("/v1/score", json=bad).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        lists = [pool.submit(one_list, r) for r in range(6)]
        singles = [pool.submit(single_bad) for _ in range(12)]
        assert [f.result() for f in singles] == [422] * 12
        for future in lists:
            answers, items = future.result()
            good = [a for a, item in zip(answers, items, strict=True) if item is not bad]
            refused = [a for a, item in zip(answers, items, strict=True) if item is bad]
            assert [(a["status"], a["field"]) for a in refused] == [(422, FEATURES[1])]
            assert_live(good, rows, svc.service.model.uri)
    assert svc.client.get("/v2/health/ready").status_code == 200


def test_an_unknown_feature_is_a_422_whether_or_not_the_key_has_a_precomputed_score(svc):
    features = {**{f: 0.5 for f in FEATURES}, "f99": 1.0}
    for key in (1, "no-such-key"):  # 1 has a current precomputed score, the other none
        response = svc.client.post("/v1/score", json={"key": key, "features": features})
        assert response.status_code == 422, (key, response.text)
        assert response.json()["field"] == "f99"
        listed = svc.client.post("/v1/score", json=[{"key": key, "features": features}]).json()
        assert listed[0]["status"] == 422 and listed[0]["field"] == "f99"
    assert svc.client.post("/v1/score", json={"key": 1}).json()["source"] == "precomputed"


def _raw(url: str, request: bytes) -> bytes:
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "value", ["²".encode(), "١٢".encode(), b"12 ", b"-1", b"0x10", b"99999999999999999999999", b"\xff\xfe"]
)
def test_an_inference_header_length_that_is_not_ascii_digits_is_a_4xx_naming_it(svc, value):
    body = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [0.5] * 5}]})
    response = _raw(
        svc.url,
        b"POST /v2/models/onnx_clf/infer HTTP/1.1\r\nhost: x\r\ninference-header-content-length: " + value + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body,
    )
    head, _, content = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, response
    assert orjson.loads(content)["field"] == "Inference-Header-Content-Length"


@pytest.mark.parametrize(
    "shape", [[2**40, 2**40], [2**62, 4], [2**64, 1], [10**30], [0, 2**70]], ids=lambda s: "x".join(map(str, s))
)
def test_a_shape_whose_product_overflows_is_a_4xx_naming_the_input(svc, shape):
    body = {"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": [0.5] * 5}]}
    response = svc.client.post("/v2/models/onnx_clf/infer", json=body)
    assert response.status_code in (400, 413, 422), response.text
    assert response.json()["field"] == "X"


def test_a_kserve_value_beyond_float32_is_a_422_naming_the_input(svc):
    body = {
        "inputs": [
            {"name": f, "shape": [1], "datatype": "FP64", "data": [1e39 if f == "f02" else 0.5]} for f in FEATURES
        ]
    }
    response = svc.client.post("/v2/models/onnx_clf/infer", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "f02"


# -- slow clients --------------------------------------------------------------------------------------------------

SLOW = 300
RECEIVE_S = 1.0


async def _slow_client(host: str, port: int, i: int, outcome: list) -> None:
    """Half a request, then a byte every 0.2 s (a whole request would take minutes): what the server does to it."""
    reader, writer = await asyncio.open_connection(host, port)
    if i % 2:
        head, drip = (
            b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 900\r\n\r\n",
            b" ",
        )
    else:
        head, drip = b"GET /v1/scores/1 HTTP/1.1\r\nhost: x\r\n", b"x"
    writer.write(head)
    sent = 0
    try:
        while sent < 600:
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(4096), timeout=0.2)
            except TimeoutError:
                writer.write(drip)
                sent += 1
                continue
            outcome[i] = ("closed", data, sent)
            return
        outcome[i] = ("held", b"", sent)
    except ConnectionError:
        outcome[i] = ("closed", b"", sent)
    finally:
        writer.close()


def test_slow_clients_are_cut_at_the_receive_deadline_and_shed_first_while_others_are_answered(served):
    tree = served.job(serve={"request_receive_timeout_s": RECEIVE_S, "max_connections": 200})
    with serving(tree) as s:
        host, port = s.url.removeprefix("http://").split(":")
        outcome: list = [None] * SLOW
        started = threading.Event()

        def slow_side() -> None:
            async def main() -> None:
                tasks = [asyncio.create_task(_slow_client(host, int(port), i, outcome)) for i in range(SLOW)]
                started.set()
                await asyncio.gather(*tasks)

            asyncio.run(main())

        thread = threading.Thread(target=slow_side)
        thread.start()
        started.wait(30)
        statuses = []
        for i in range(150):  # normal traffic beside them: new connections and a keep-alive one
            with httpx.Client(base_url=s.url, timeout=30) as fresh:
                statuses.append(fresh.get(f"/v1/scores/{i}").status_code)
            statuses.append(s.client.post("/v1/score", json=[{"key": i}, {"key": i + 1}]).status_code)
        thread.join(timeout=300)
        assert statuses == [200] * len(statuses)
        assert None not in outcome
        held = [o for o in outcome if o[0] != "closed"]
        assert held == [], f"{len(held)} slow connections were held to the end"
        answered = [o[1].split(b"\r\n", 1)[0] for o in outcome if o[1]]
        assert answered and all(line.startswith(b"HTTP/1.1 408") for line in answered), set(answered)
        assert s.client.get("/v2/health/ready").status_code == 200
