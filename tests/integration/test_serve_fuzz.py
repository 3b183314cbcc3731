"""``scoring serve``: nothing a client can send is a 500 (issue 17, section 3), property-tested against a running
service.

Three generators, each with a fixed seed (``derandomize``) and a bounded number of examples, so that CI runs the same
cases every time:

- hypothesis strategies per route (``POST /v1/score``, ``GET /v1/scores/{key}``, ``POST /v2/models/.../infer``):
  JSON of every shape, values beyond every range, keys and shapes of every type, raw bytes;
- schemathesis, from the service's own OpenAPI (the routes declare their request bodies), positive and negative;
- a raw-socket client: any bytes in a header's name or value, and any body bytes.

Properties: no 5xx while the backend is healthy; every 400, 413 and 422 names its ``field``.
"""

from __future__ import annotations

import json
import socket
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import FEATURES

pytest.register_assert_rewrite("tests.integration.serve_fixtures")
from tests.integration.serve_fixtures import serving  # noqa: E402

pytest_plugins = ["tests.integration.serve_fixtures"]

FIXED = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    max_examples=120,
)


@pytest.fixture(scope="module")
def svc(served):
    tree = served.job(serve={"max_body_bytes": 65_536, "max_batch_keys": 50, "request_receive_timeout_s": 2.0})
    with serving(tree) as s:
        yield s


def check(status: int, content: bytes, what: object) -> None:
    """The properties: never a 5xx; a 400, 413 or 422 is JSON naming its field."""
    assert status < 500, (status, content[:300], what)
    if status in (400, 413, 422):
        body = orjson.loads(content)
        assert isinstance(body.get("field"), str) and body["field"], (status, body, what)


# -- strategies ----------------------------------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([1e39, -1e39, 3.4028234663852886e38, 3.4028235677973366e38, 2**31, 2**63, -(2**63) - 1]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
feature_names = st.sampled_from([*FEATURES, "f99", "", "key"])
features = st.one_of(
    st.fixed_dictionaries({f: st.one_of(numbers, scalars) for f in FEATURES}),
    st.dictionaries(feature_names, st.one_of(numbers, json_values), max_size=7),
    json_values,
)
keys = st.one_of(scalars, st.integers(0, 1200), json_values)
items = st.one_of(
    st.fixed_dictionaries({"key": keys}, optional={"features": features}),
    st.fixed_dictionaries({"key": keys, "features": features, "extra": json_values}),
    json_values,
)
score_bodies = st.one_of(
    items.map(lambda v: json.dumps(v).encode()),
    st.lists(items, max_size=60).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)
datatypes = st.one_of(st.sampled_from(["FP32", "FP64", "INT32", "INT64", "BOOL", "FP16", "UINT8", "BYTES"]), scalars)
shapes = st.one_of(st.lists(st.integers(-2, 2**70), max_size=4), json_values)
tensors = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from([*FEATURES, "X", "zz"]), scalars), "shape": shapes, "datatype": datatypes},
    optional={
        "data": st.one_of(
            st.lists(numbers, max_size=12), st.lists(st.lists(numbers, max_size=5), max_size=3), json_values
        ),
        "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.integers(-5, 2**66)}), json_values),
    },
)
infer_bodies = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.one_of(st.lists(tensors, max_size=6), json_values)},
        optional={
            "outputs": st.one_of(st.lists(st.fixed_dictionaries({"name": scalars}), max_size=3), json_values),
            "parameters": json_values,
            "id": scalars,
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
)
header_texts = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["²", "12", "0", "99999999999999999999"]))


# -- per route -----------------------------------------------------------------------------------------------------


def test_no_score_request_is_a_5xx_and_every_refusal_names_its_field(svc):
    @FIXED
    @given(body=score_bodies)
    def run(body: bytes) -> None:
        response = svc.client.post("/v1/score", content=body, headers={"content-type": "application/json"})
        check(response.status_code, response.content, body)
        if response.status_code == 200 and response.content.startswith(b"["):
            for item in response.json():  # a list's items carry their own status; the same properties hold
                if "status" in item:
                    check(item["status"], orjson.dumps(item), body)

    run()


def test_no_key_path_is_a_5xx(svc):
    @FIXED
    @given(parts=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3))
    def run(parts: list[str]) -> None:
        path = "/v1/scores/" + "/".join(quote(p, safe="") for p in parts)
        response = svc.client.get(path)
        check(response.status_code, response.content, path)

    run()


def test_no_infer_request_is_a_5xx_and_every_refusal_names_its_field(svc):
    @FIXED
    @given(body=infer_bodies, header=header_texts, name=st.sampled_from(["onnx_clf", "nope"]))
    def run(body: bytes, header: str | None, name: str) -> None:
        extra = b"" if header is None else b"inference-header-content-length: " + header.encode() + b"\r\n"
        response = _raw(
            svc.url,
            b"POST /v2/models/" + name.encode() + b"/infer HTTP/1.1\r\nhost: x\r\n" + extra + b"content-type: "
            b"application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body,
        )
        status, content = _status(response)
        check(status, content if status != 200 else b"{}", (body, header))

    run()


# -- from the OpenAPI ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method"), [("/v1/score", "POST"), ("/v2/models/{name}/infer", "POST"), ("/v1/scores/{key}", "GET")]
)
def test_the_openapi_describes_the_bodies_and_nothing_it_generates_is_a_5xx(svc, path, method):
    import schemathesis
    from schemathesis import GenerationMode

    spec = svc.client.get("/openapi.json").json()
    if method == "POST":  # the routes declare their bodies: a schema-driven fuzzer generates real requests
        assert "requestBody" in spec["paths"][path]["post"], spec["paths"][path]
    operation = schemathesis.openapi.from_dict(spec)[path][method]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(FIXED, max_examples=80)
    @given(case=strategy)
    def run(case) -> None:
        response = case.call(base_url=svc.url)
        check(response.status_code, response.content, (case.path_parameters, case.body))

    run()


# -- raw bytes on a socket -----------------------------------------------------------------------------------------


def _raw(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _status(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_no_header_bytes_are_a_5xx_and_every_refusal_names_its_field(svc):
    body = orjson.dumps({"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [0.5] * 5}]})

    @FIXED
    @given(
        name=st.one_of(
            st.binary(min_size=1, max_size=20),
            st.sampled_from([b"inference-header-content-length", b"content-length", b"authorization"]),
        ),
        value=st.binary(max_size=30),
        route=st.sampled_from([b"/v2/models/onnx_clf/infer", b"/v1/score", b"/v1/status"]),
    )
    def run(name: bytes, value: bytes, route: bytes) -> None:
        request = (
            b"POST " + route + b" HTTP/1.1\r\nhost: x\r\n" + name + b": " + value + b"\r\n"
            b"content-type: application/json\r\ncontent-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        response = _raw(svc.url, request)
        if not response:
            return  # the server closed a connection it could not read a request from: no answer, no 5xx
        status, content = _status(response)
        check(status, content if status != 200 else b"{}", (name, value, route))

    run()
