"""``scoring serve`` end to end with live inference embedded: real HTTP against a running service, the batch job's
real Delta output read back with delta-rs, a real MLflow registry, the model's own predict to compare with.

Covered here: precomputed answers equal the table (every key, the newest row of several, a partition, composite
keys); live answers equal the model's predict (one at a time, lists, concurrent); version awareness (the alias moves,
max_age_s); a new table version picked up under load; every bad input a 4xx naming the field; auth; /metrics and
readiness; and the ``scoring serve`` command as a subprocess. Triton: test_serve_triton.py; Redis:
test_serve_redis.py.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import yaml

from scoring import build_job_config, columns
from scoring.errors import ConfigError
from scoring.modes.online import OnlineService
from tests.integration.conftest import FEATURES, delta_version, read_delta

pytest.register_assert_rewrite("tests.integration.serve_fixtures")  # its helpers assert; imported before the plugin
from tests.integration.serve_fixtures import (  # noqa: E402
    DAY_A,
    DAY_B,
    KEYS,
    assert_live,
    assert_record,
    feature_rows,
    matrix,
    metric,
    newest_rows,
    own_predict,
    score_into,
    serving,
)

pytest_plugins = ["tests.integration.serve_fixtures"]

MAX_BODY = 65_536
MAX_KEYS = 500


@pytest.fixture(scope="module")
def svc(served):
    """The module's service: the served table, embedded live inference."""
    with serving(served.job(serve={"max_body_bytes": MAX_BODY, "max_batch_keys": MAX_KEYS})) as s:
        yield s


@pytest.fixture(scope="module")
def table(served):
    """The served table as delta-rs reads it."""
    return served.rows()


def _post_keys(client: httpx.Client, keys, *, chunk: int = MAX_KEYS) -> list[dict]:
    answers = []
    for start in range(0, len(keys), chunk):
        response = client.post("/v1/score", json=[{"key": k} for k in keys[start : start + chunk]])
        assert response.status_code == 200, response.text
        answers += response.json()
    return answers


# -- precomputed ---------------------------------------------------------------------------------------------------


def test_every_key_is_answered_with_its_newest_row_as_the_table_holds_it(svc, served, table):
    # the table really holds two rows per key, one per run and day
    assert table.num_rows == 2 * KEYS
    assert set(table.column(columns.SCORING_RUN_ID).to_pylist()) == {served.run_a.run_id, served.run_b.run_id}
    expected = newest_rows(table)
    assert len(expected) == KEYS
    keys = sorted(int(k) for k in expected)
    answers = _post_keys(svc.client, keys)
    assert len(answers) == KEYS
    for key, answer in zip(keys, answers, strict=True):
        assert answer["key"] == key and answer["stale"] is False
        assert_record(answer, expected[str(key)])
    # the newest row is the second run's (DAY_B) for every key
    assert {a[columns.SCORING_RUN_ID] for a in answers} == {served.run_b.run_id}
    assert {a["partition"]["ds"] for a in answers} == {DAY_B}


def test_get_and_post_answer_a_key_alike(svc, table):
    expected = newest_rows(table)
    for key in (0, 1, 17, 256, 511, 998, KEYS - 1):
        got = svc.client.get(f"/v1/scores/{key}")
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == "application/json"
        by_path = got.json()
        assert by_path["key"] == str(key)
        assert_record(by_path, expected[str(key)])
        for sent in (key, str(key), {"customer_id": key}):
            posted = svc.client.post("/v1/score", json={"key": sent})
            assert posted.status_code == 200, posted.text
            answer = posted.json()
            assert answer["key"] == sent
            assert_record(answer, expected[str(key)])
            assert answer.pop("features_used") is False  # (a POST says whether it used the features it sent)
            assert {k: v for k, v in answer.items() if k != "key"} == {k: v for k, v in by_path.items() if k != "key"}


def test_a_current_precomputed_score_is_served_even_when_features_are_sent(svc, table, served):
    row = newest_rows(table)["7"]
    answer = svc.client.post("/v1/score", json={"key": 7, "features": {f: 0.0 for f in FEATURES}})
    assert answer.status_code == 200
    assert answer.json()["features_used"] is False
    assert_record(answer.json(), row)


def test_serve_partition_answers_from_that_partition_only(served, table):
    day_a = table.filter(np.array([d == DAY_A for d in table.column("ds").to_pylist()]))
    expected = newest_rows(day_a)
    with serving(served.job(serve={"partition": {"ds": DAY_A}})) as s:
        keys = sorted(int(k) for k in expected)
        answers = _post_keys(s.client, keys, chunk=1000)
        for key, answer in zip(keys, answers, strict=True):
            assert_record(answer, expected[str(key)])
        assert {a[columns.SCORING_RUN_ID] for a in answers} == {served.run_a.run_id}
        assert_record(s.client.get("/v1/scores/3").json(), expected["3"])


def test_composite_keys_by_path_segments_and_by_object_or_list(served, table):
    expected = newest_rows(table, ("customer_id", "ds"))
    assert len(expected) == 2 * KEYS
    tree = served.job(input={"key": ["customer_id", "ds"]})
    with serving(tree) as s:
        for key in (0, 42, KEYS - 1):
            for day, run_record in ((DAY_A, served.run_a), (DAY_B, served.run_b)):
                row = expected[(str(key), day)]
                assert row[columns.SCORING_RUN_ID] == run_record.run_id
                by_path = s.client.get(f"/v1/scores/{key}/{day}")
                assert by_path.status_code == 200, by_path.text
                assert by_path.json()["key"] == {"customer_id": str(key), "ds": day}
                assert_record(by_path.json(), row)
                for sent in ({"customer_id": key, "ds": day}, [key, day], [str(key), day]):
                    answer = s.client.post("/v1/score", json={"key": sent})
                    assert answer.status_code == 200, answer.text
                    assert_record(answer.json(), row)
        keys = [[k, d] for k in range(KEYS) for d in (DAY_A, DAY_B)]
        answers = _post_keys(s.client, keys, chunk=1000)
        for (k, d), answer in zip(keys, answers, strict=True):
            assert_record(answer, expected[(str(k), d)])

        # the wrong number of parts, by path, list or object
        wrong = s.client.get("/v1/scores/5")
        assert wrong.status_code == 404 and wrong.json()["field"] == "key"
        assert "customer_id/ds" in wrong.json()["error"]
        for sent, named in (([5], "customer_id"), ([5, DAY_A, "x"], "ds"), ({"customer_id": 5}, "missing ds")):
            answer = s.client.post("/v1/score", json={"key": sent})
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == "key" and named in answer.json()["error"]
        unknown = s.client.post("/v1/score", json={"key": {"customer_id": 5, "ds": DAY_A, "region": "x"}})
        assert unknown.status_code == 422 and "unknown region" in unknown.json()["error"]
        bad_part = s.client.post("/v1/score", json={"key": [5, None]})
        assert bad_part.status_code == 422 and bad_part.json()["field"] == "ds"


# -- live ----------------------------------------------------------------------------------------------------------


def test_live_answers_equal_the_models_own_predict(svc, served):
    rows = feature_rows(served.features.slice(0, 40))
    model_uri = served.run_b.model_uri
    one = [svc.client.post("/v1/score", json={"key": 100_000 + i, "features": r}) for i, r in enumerate(rows[:5])]
    assert all(r.status_code == 200 for r in one), [r.text for r in one]
    assert_live([r.json() for r in one], rows[:5], model_uri)
    many = svc.client.post("/v1/score", json=[{"key": 100_000 + i, "features": r} for i, r in enumerate(rows)])
    assert many.status_code == 200, many.text
    answers = many.json()
    assert_live(answers, rows, model_uri)
    for i, answer in enumerate(answers):
        assert answer["key"] == 100_000 + i
        assert answer["backend"] == "embedded" and answer["fallback"] is False and answer["stale"] is False
        assert answer["model_version"] == served.run_b.model_version and answer["model_uri"] == model_uri


def test_a_list_mixes_precomputed_live_and_missing_keys_in_order(svc, served, table):
    expected = newest_rows(table)
    features = feature_rows(served.features.slice(10, 1))[0]
    answers = svc.client.post(
        "/v1/score", json=[{"key": 3}, {"key": "nobody", "features": features}, {"key": "nobody-else"}, {"key": 4}]
    )
    assert answers.status_code == 200
    first, live, missing, last = answers.json()
    assert_record(first, expected["3"])
    assert_live([live], [features], served.run_b.model_uri)
    assert missing["status"] == 404 and missing["field"] == "key" and "nobody-else" in missing["error"]
    assert_record(last, expected["4"])


def test_concurrent_live_requests_are_all_answered_correctly(served):
    rows = feature_rows(served.features.slice(100, 50))
    with serving(served.job(serve={"batch_window_ms": 50})) as s:
        barrier = threading.Barrier(len(rows))

        def ask(i: int) -> httpx.Response:
            with httpx.Client(base_url=s.url, timeout=60) as client:
                barrier.wait()
                return client.post("/v1/score", json={"key": f"new-{i}", "features": rows[i]})

        with concurrent.futures.ThreadPoolExecutor(len(rows)) as pool:
            responses = list(pool.map(ask, range(len(rows))))
        assert [r.status_code for r in responses] == [200] * len(rows), [r.text for r in responses if r.is_error]
        answers = [r.json() for r in responses]
        assert [a["key"] for a in answers] == [f"new-{i}" for i in range(len(rows))]
        assert_live(answers, rows, served.run_b.model_uri)
        text = s.client.get("/metrics").text
        assert metric(text, "scoring_serve_lookups_total", outcome="live") == len(rows)


# -- version awareness ---------------------------------------------------------------------------------------------


@pytest.fixture
def at_v1(versioned):
    versioned.point_alias(versioned.v1)
    yield versioned
    versioned.point_alias(versioned.v1)


def test_when_the_alias_moves_old_scores_go_live_with_features_and_404_without(at_v1):
    v = at_v1
    table = read_delta(v.table)
    expected = newest_rows(table)
    day_a = v.served.features.slice(0, KEYS)
    features = dict(zip(day_a.column("customer_id").to_pylist(), feature_rows(day_a), strict=True))
    with serving(v.job()) as s:
        assert s.service.model.version == v.v1
        assert_record(s.client.get("/v1/scores/11").json(), expected["11"])
        assert s.service.check_alias() is False  # nothing moved yet

        v.point_alias(v.v2)
        assert s.service.check_alias() is True
        assert s.service.model.version == v.v2
        status = s.client.get("/v1/status").json()
        assert status["model_version"] == v.v2

        stale = s.client.get("/v1/scores/11")
        assert stale.status_code == 404 and stale.json()["field"] == "key"
        assert f"scored by model version {v.v1}" in stale.json()["error"]
        without = s.client.post("/v1/score", json={"key": 11})
        assert without.status_code == 404 and "stale" in without.json()["error"]

        keys = [11, 12, 13]
        live = s.client.post("/v1/score", json=[{"key": k, "features": features[k]} for k in keys])
        assert live.status_code == 200, live.text
        answers = live.json()
        assert all(a["model_version"] == v.v2 and a["model_uri"] == f"models:/{v.name}/{v.v2}" for a in answers)
        assert_live(answers, [features[k] for k in keys], f"models:/{v.name}/{v.v2}")
        # version 2 predicts differently from the stored version-1 scores for some key (the test means something)
        old = [expected[str(k)]["probabilities"] for k in keys]
        assert not np.allclose([a["predictions"]["probabilities"] for a in answers], old)

        text = s.client.get("/metrics").text
        assert metric(text, "scoring_serve_model_version") == float(v.v2)
        assert metric(text, "scoring_serve_lookups_total", outcome="stale") == 2  # the GET and the POST without

        # the alias moves back: the precomputed scores are current again
        v.point_alias(v.v1)
        assert s.service.check_alias() is True
        assert_record(s.client.get("/v1/scores/11").json(), expected["11"])


def test_serve_stale_answers_an_old_score_marked_stale(at_v1):
    v = at_v1
    expected = newest_rows(read_delta(v.table))
    with serving(v.job(serve={"serve_stale": True, "live": False})) as s:
        v.point_alias(v.v2)
        assert s.service.check_alias() is True
        for response in (s.client.get("/v1/scores/21"), s.client.post("/v1/score", json={"key": 21})):
            assert response.status_code == 200, response.text
            answer = response.json()
            assert answer["stale"] is True and f"version {v.v1}" in answer["stale_reason"]
            assert_record(answer, expected["21"])
        # live is off: features do not help a key without a score
        nobody = s.client.post("/v1/score", json={"key": "nobody", "features": {f: 0.0 for f in FEATURES}})
        assert nobody.status_code == 404 and "serve.live" in nobody.json()["error"]


def test_a_new_alias_is_noticed_by_the_background_check(at_v1):
    v = at_v1
    with serving(v.job(serve={"alias_check_interval_s": 0.2})) as s:
        assert s.client.get("/v1/scores/11").status_code == 200
        v.point_alias(v.v2)
        deadline = time.monotonic() + 60
        while s.client.get("/v1/status").json()["model_version"] != v.v2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.client.get("/v1/status").json()["model_version"] == v.v2
        assert s.client.get("/v1/scores/11").status_code == 404


def test_max_age_s_makes_older_scores_stale(at_v1):
    v = at_v1
    expected = newest_rows(read_delta(v.table))
    with serving(v.job(serve={"max_age_s": 1e-3, "serve_stale": True})) as s:
        answer = s.client.get("/v1/scores/5").json()
        assert answer["stale"] is True and "older than serve.max_age_s" in answer["stale_reason"]
        assert_record(answer, expected["5"])
    with serving(v.job(serve={"max_age_s": 1e-3})) as s:
        assert s.client.get("/v1/scores/5").status_code == 404
    with serving(v.job(serve={"max_age_s": 86_400})) as s:
        answer = s.client.get("/v1/scores/5").json()
        assert answer["stale"] is False
        assert_record(answer, expected["5"])


# -- a new table version under load --------------------------------------------------------------------------------


def test_a_new_table_version_is_picked_up_while_requests_are_in_flight(spark, served, tmp_path):
    output = str(tmp_path / "scores")
    shutil.copytree(served.output_table, output)
    before = delta_version(output)
    keys = list(range(0, KEYS, 7))
    with serving(served.job(output, serve={"refresh_interval_s": 0.2})) as s:
        assert s.client.get("/v1/status").json()["table_version"] == before
        failures: list[str] = []
        seen: list[tuple[str, str]] = []  # (run id, phase)
        stop = threading.Event()

        def hammer() -> None:
            with httpx.Client(base_url=s.url, timeout=60) as client:
                i = 0
                while not stop.is_set():
                    key = keys[i % len(keys)]
                    i += 1
                    for response in (
                        client.get(f"/v1/scores/{key}"),
                        client.post("/v1/score", json=[{"key": key}, {"key": keys[-1 - i % len(keys)]}]),
                    ):
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text}")
                            continue
                        body = response.json()
                        for answer in body if isinstance(body, list) else [body]:
                            if "status" in answer:
                                failures.append(orjson.dumps(answer).decode())
                            else:
                                seen.append(answer[columns.SCORING_RUN_ID])

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            rescored = score_into(spark, served.lake, served.input_table, output, f"ds = '{DAY_B}'")
            after = delta_version(output)
            assert after is not None and after > before
            deadline = time.monotonic() + 60
            while s.client.get("/v1/status").json()["table_version"] != after and time.monotonic() < deadline:
                time.sleep(0.05)
            switched = len(seen)
            while len(seen) < switched + 50 and not failures and all(t.is_alive() for t in threads):
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        assert failures == []
        assert s.client.get("/v1/status").json()["table_version"] == after
        assert set(seen) <= {served.run_b.run_id, rescored.run_id}
        # answers came all along: the old run's before the swap, only the new run's after it (but for the answers
        # of the two requests, one per thread, that may have looked up before the swap and answered after)
        assert switched > 0 and seen[0] == served.run_b.run_id
        assert len(seen) > switched + 4 and set(seen[switched + 4 :]) == {rescored.run_id}
        expected = newest_rows(read_delta(output))
        answers = _post_keys(s.client, list(range(KEYS)))
        for key, answer in enumerate(answers):
            assert answer[columns.SCORING_RUN_ID] == rescored.run_id
            assert_record(answer, expected[str(key)])
        assert metric(s.client.get("/metrics").text, "scoring_serve_index_table_version") == after


# -- bad input -----------------------------------------------------------------------------------------------------

_GOOD = {f: 0.5 for f in FEATURES}


def _json(value) -> bytes:
    return orjson.dumps(value)


BAD = {
    "unknown key by path": ("GET", "/v1/scores/no-such-key", None, 404, "key", "no-such-key"),
    "unknown key with no features": ("POST", "/v1/score", _json({"key": "nobody"}), 404, "key", "nobody"),
    "malformed JSON": ("POST", "/v1/score", b'{"key": 1,', 400, "body", "not valid JSON"),
    "not an object": ("POST", "/v1/score", _json("abc"), 422, "body", "expected an object"),
    "no key": ("POST", "/v1/score", _json({"features": _GOOD}), 422, "key", "key: required"),
    "unknown top-level field": ("POST", "/v1/score", _json({"key": 1, "feature": {}}), 422, "feature", "feature"),
    "key of the wrong type": ("POST", "/v1/score", _json({"key": [1, 2]}), 422, "key", "customer_id"),
    "key true": ("POST", "/v1/score", _json({"key": True}), 422, "key", "True"),
    "features not an object": ("POST", "/v1/score", _json({"key": "x", "features": [1, 2]}), 422, "features", ""),
    "missing feature": (
        "POST",
        "/v1/score",
        _json({"key": "x", "features": {f: 1.0 for f in FEATURES if f != "f03"}}),
        422,
        "f03",
        "missing f03",
    ),
    "extra feature": ("POST", "/v1/score", _json({"key": "x", "features": {**_GOOD, "f99": 1}}), 422, "f99", "f99"),
    "string feature": ("POST", "/v1/score", _json({"key": "x", "features": {**_GOOD, "f02": "1.5"}}), 422, "f02", ""),
    "bool feature": ("POST", "/v1/score", _json({"key": "x", "features": {**_GOOD, "f01": True}}), 422, "f01", ""),
    "object feature": ("POST", "/v1/score", _json({"key": "x", "features": {**_GOOD, "f04": {}}}), 422, "f04", ""),
    "null feature": ("POST", "/v1/score", _json({"key": "x", "features": {**_GOOD, "f00": None}}), 422, "f00", ""),
    "NaN as a string": ("POST", "/v1/score", _json({"key": "x", "features": {**_GOOD, "f00": "NaN"}}), 422, "f00", ""),
    "NaN literal": (
        "POST",
        "/v1/score",
        b'{"key": "x", "features": {"f00": NaN, "f01": 1, "f02": 1, "f03": 1, "f04": 1}}',
        422,
        "f00",
        "finite",
    ),
    "Infinity literal": (
        "POST",
        "/v1/score",
        b'{"key": "x", "features": {"f00": 1, "f01": -Infinity, "f02": 1, "f03": 1, "f04": 1}}',
        422,
        "f01",
        "finite",
    ),
    "a number too large for float": (
        "POST",
        "/v1/score",
        b'{"key": "x", "features": {"f00": 1e400, "f01": 1, "f02": 1, "f03": 1, "f04": 1}}',
        422,
        "f00",
        "finite",
    ),
    "a value beyond float32": (
        "POST",
        "/v1/score",
        b'{"key": "x", "features": {"f00": 1, "f01": 1e39, "f02": 1, "f03": 1, "f04": 1}}',
        422,
        "f01",
        "beyond float32",
    ),
    "too many keys": ("POST", "/v1/score", _json([{"key": 1}] * (MAX_KEYS + 1)), 413, "body", "max_batch_keys"),
    "oversized body": (
        "POST",
        "/v1/score",
        _json({"key": "x" * MAX_BODY}),
        413,
        "body",
        "max_body_bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_input_is_a_4xx_naming_the_field(svc, case):
    method, path, body, status, field, says = BAD[case]
    response = svc.client.request(method, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field, error
    assert says in error["error"] and (field in error["error"] or field in ("body",)), error


def test_a_bad_item_in_a_list_is_a_422_naming_its_index_and_field_for_that_item_alone(svc, served):
    rows = feature_rows(served.features.slice(0, 2))
    body = [
        {"key": "x", "features": rows[0]},
        {"key": "y", "features": {**_GOOD, "f03": "a"}},
        {"key": "z", "features": rows[1]},
    ]
    response = svc.client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    first, bad, last = response.json()
    assert bad["status"] == 422 and bad["field"] == "f03" and "[1].features.f03" in bad["error"], bad
    assert_live([first, last], rows, svc.service.model.uri)


def test_an_oversized_body_without_a_length_is_refused_too(svc):
    def chunks():
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    response = svc.client.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert response.json()["field"] == "body"


def _infer(client, body, name="onnx_clf", version=None, headers=None):
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, content=content, headers=headers or {})


def _tensor(name="X", shape=(2, 5), datatype="FP32", data=None):
    count = int(np.prod(shape))
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": data or [0.5] * count}


KSERVE_BAD = {
    "unknown datatype": ({"inputs": [_tensor(datatype="FP99")]}, 400, "'X'"),
    "text datatype": ({"inputs": [_tensor(datatype="BYTES", data=["a"] * 10)]}, 400, "'X'"),
    "shape not a list": ({"inputs": [{**_tensor(), "shape": "2x5"}]}, 400, "'X'"),
    "negative dimension": ({"inputs": [{**_tensor(), "shape": [-1, 5]}]}, 400, "'X'"),
    "data count off the shape": ({"inputs": [_tensor(data=[0.5] * 9)]}, 422, "'X'"),
    "too few columns": ({"inputs": [_tensor(shape=(2, 4))]}, 422, "'X'"),
    "strings as data": ({"inputs": [_tensor(data=["a"] * 10)]}, 422, "'X'"),
    "no inputs": ({"inputs": []}, 400, "inputs"),
    "an unknown per-feature input": (
        {"inputs": [_tensor(f, (2,)) for f in FEATURES[:4]] + [_tensor("f99", (2,))]},
        422,
        "f99",
    ),
    "a per-feature input of the wrong shape": (
        {"inputs": [_tensor(f, (2,)) for f in FEATURES[:4]] + [_tensor("f04", (2, 2))]},
        422,
        "'f04' must be [rows] or [rows, 1]",
    ),
    "a missing per-feature input": ({"inputs": [_tensor(f, (2,)) for f in FEATURES[:4]]}, 422, "f04"),
    "per-feature inputs of different lengths": (
        {"inputs": [_tensor(f, (2,)) for f in FEATURES[:4]] + [_tensor("f04", (3,))]},
        422,
        "different numbers of rows",
    ),
    "a NaN in the data": ({"inputs": [_tensor("X", (1, 5), data=[0.1, 0.2, "NaN", 0.4, 0.5])]}, 422, "'X'"),
    "a NaN literal in the data": (
        b'{"inputs": [{"name": "X", "shape": [1, 5], "datatype": "FP32", "data": [0.1, 0.2, 0.3, NaN, 0.5]}]}',
        422,
        "feature 'f03': row 0 is nan, not a finite number",
    ),
    "not JSON": (b"{inputs", 400, "not valid JSON"),
    "unknown output": ({"inputs": [_tensor()], "outputs": [{"name": "score"}]}, 400, "score"),
}


@pytest.mark.parametrize("case", list(KSERVE_BAD))
def test_every_bad_kserve_request_is_a_4xx_naming_the_input(svc, case):
    body, status, says = KSERVE_BAD[case]
    response = _infer(svc.client, body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"], response.json()


def test_an_unknown_model_or_version_is_404_on_the_v2_routes(svc):
    body = {"inputs": [_tensor()]}
    version = svc.service.model.version
    assert _infer(svc.client, body).status_code == 200
    assert _infer(svc.client, body, version=version).status_code == 200
    for name, v in (("nope", None), ("nope", version), ("onnx_clf", "999")):
        response = _infer(svc.client, body, name, v)
        assert response.status_code == 404, response.text
        assert (name if v is None or name == "nope" else "version 999") in response.json()["error"]
    assert svc.client.get("/v2/models/nope").status_code == 404
    assert svc.client.get("/v2/models/onnx_clf/versions/999/ready").status_code == 404
    assert svc.client.get("/v2/models/onnx_clf/ready").status_code == 200
    meta = svc.client.get(f"/v2/models/onnx_clf/versions/{version}").json()
    assert [i["name"] for i in meta["inputs"]] == FEATURES and meta["versions"] == [version]
    bad_header = _infer(svc.client, body, headers={"Inference-Header-Content-Length": "abc"})
    assert bad_header.status_code == 400 and "Inference-Header-Content-Length" in bad_header.json()["error"]
    too_long = _infer(svc.client, body, headers={"Inference-Header-Content-Length": "100000"})
    assert too_long.status_code == 400 and "Inference-Header-Content-Length" in too_long.json()["error"]


def test_binary_tensors_that_do_not_add_up_are_a_400_naming_the_input(svc, served):
    x = matrix(feature_rows(served.features.slice(0, 2)))
    raw = x.astype("<f4").tobytes()
    for size, sent in ((len(raw), raw[:-4]), (len(raw) - 4, raw), (7, raw)):
        head = orjson.dumps(
            {"inputs": [{"name": "X", "shape": [2, 5], "datatype": "FP32", "parameters": {"binary_data_size": size}}]}
        )
        response = _infer(svc.client, head + sent, headers={"Inference-Header-Content-Length": str(len(head))})
        assert response.status_code == 400, response.text
        assert "inputs[0] ('X'): binary_data_size" in response.json()["error"]
    head = orjson.dumps(
        {"inputs": [{"name": "X", "shape": [2, 5], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]}
    )
    good = _infer(svc.client, head + raw, headers={"Inference-Header-Content-Length": str(len(head))})
    assert good.status_code == 200, good.text
    label, proba = own_predict(served.run_b.model_uri, x)
    outputs = {o["name"]: o["data"] for o in good.json()["outputs"]}  # JSON outputs: none were asked as binary
    assert outputs["label"] == label.tolist()
    np.testing.assert_allclose(np.reshape(outputs["probabilities"], proba.shape), proba, rtol=1e-6)


def test_a_serve_partition_that_is_not_a_partition_column_is_a_config_error_naming_it(served):
    config = build_job_config(served.job(serve={"partition": {"region": "north"}}))
    with pytest.raises(ConfigError, match=r"serve.partition names \['region'\]") as raised:
        OnlineService(config).start()
    assert "ds" in str(raised.value)


# -- auth ----------------------------------------------------------------------------------------------------------

TOKEN_ENV = "SCORING_TEST_SERVE_TOKEN"


def test_auth_needs_the_bearer_token_except_on_health_routes(served, monkeypatch):
    token = "s3cret-token-of-some-length"
    monkeypatch.setenv(TOKEN_ENV, token)
    with serving(served.job(serve={"auth_token_env": TOKEN_ENV})) as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            for method, path in (("GET", "/v1/scores/1"), ("POST", "/v1/score"), ("GET", "/metrics")):
                response = s.client.request(method, path, headers=headers, json={"key": 1})
                assert response.status_code == 401, (headers, path)
                assert response.headers["www-authenticate"] == "Bearer"
                assert token not in response.text
        good = {"Authorization": f"Bearer {token}"}
        assert s.client.get("/v1/scores/1", headers=good).status_code == 200
        assert s.client.post("/v1/score", json={"key": 1}, headers=good).status_code == 200
        assert s.client.get("/metrics", headers=good).status_code == 200
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert s.client.get(path).status_code == 200, path


def test_auth_without_the_token_in_the_environment_is_a_config_error_at_start(served, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = build_job_config(served.job(serve={"auth_token_env": TOKEN_ENV}))
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        OnlineService(config)
    monkeypatch.setenv(TOKEN_ENV, "")
    with pytest.raises(ConfigError, match="not set"):
        OnlineService(config)


def test_without_auth_every_route_is_open(svc):
    assert svc.client.get("/v1/scores/1").status_code == 200
    assert svc.client.get("/metrics").status_code == 200


# -- metrics and readiness -----------------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_and_source_lookups_by_outcome_and_the_index_version(served):
    features = feature_rows(served.features.slice(0, 2))
    with serving(served.job()) as s:
        assert s.client.get("/v2/health/ready").status_code == 200
        assert s.client.get("/v2/health/ready").json() == {"ready": True, "reason": "ready"}
        assert s.client.get("/v2/health/live").status_code == 200
        for key in (1, 2, 3):
            assert s.client.get(f"/v1/scores/{key}").status_code == 200
        assert s.client.get("/v1/scores/nobody").status_code == 404
        assert s.client.post("/v1/score", json=[{"key": "a", "features": features[0]}, {"key": 4}]).status_code == 200
        assert s.client.post("/v1/score", json={"key": "b", "features": features[1]}).status_code == 200
        assert _infer(s.client, {"inputs": [_tensor()]}).status_code == 200
        text = s.client.get("/metrics").text
        count = "scoring_serve_request_duration_seconds_count"
        assert metric(text, count, route="scores", source="precomputed") == 3
        assert metric(text, count, route="score", source="live") == 2
        assert metric(text, count, route="infer", source="live") == 1
        assert metric(text, "scoring_serve_lookups_total", outcome="hit") == 4
        assert metric(text, "scoring_serve_lookups_total", outcome="miss") == 1
        assert metric(text, "scoring_serve_lookups_total", outcome="live") == 4
        assert metric(text, "scoring_serve_index_table_version", job="test") == delta_version(served.output_table)
        assert metric(text, "scoring_serve_index_keys") == KEYS
        assert metric(text, "scoring_serve_model_version") == float(served.run_b.model_version)
        status = s.client.get("/v1/status").json()
        assert status["table_version"] == delta_version(served.output_table) and status["ready"] is True


# -- the command ---------------------------------------------------------------------------------------------------

SCORING = [sys.executable, "-m", "scoring.cli"]


def _config(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _scoring(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*SCORING, *args], capture_output=True, text=True, timeout=timeout, check=False)


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


def test_the_serve_command_starts_answers_and_stops_on_sigterm(served, table, tmp_path):
    config = _config(tmp_path, served.job(serve={"port": 0}))
    proc = subprocess.Popen(
        [*SCORING, "serve", str(config), "--port", "0"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        match, before = _read_until(proc.stderr, r"on http://127\.0\.0\.1:(\d+)")
        assert match is not None, before
        url = f"http://127.0.0.1:{match.group(1)}"
        assert f"table {served.output_table} version {delta_version(served.output_table)}" in before
        answer = httpx.get(f"{url}/v1/scores/9", timeout=30)
        assert answer.status_code == 200
        assert_record(answer.json(), newest_rows(table)["9"])
        assert httpx.get(f"{url}/v2/health/ready", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, rest
    assert "stopped" in rest and "Traceback" not in before + rest


def test_the_serve_command_without_an_output_table_exits_1_with_a_plain_message(served, tmp_path):
    missing = tmp_path / "no-such-table"
    done = _scoring("serve", str(_config(tmp_path, served.job(str(missing)))), "--port", "0")
    assert done.returncode == 1, done.stderr
    assert f"no Delta table at {missing}" in done.stderr and "scoring run" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_serve_command_with_a_bad_serve_key_exits_2_naming_it(served, tmp_path):
    done = _scoring("serve", str(_config(tmp_path, served.job(serve={"refresh_intervl_s": 1}))))
    assert done.returncode == 2, done.stderr
    assert "serve.refresh_intervl_s" in done.stderr and "refresh_interval_s" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_serve_command_with_the_auth_variable_unset_exits_2_naming_it(served, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    config = _config(tmp_path, served.job(serve={"auth_token_env": TOKEN_ENV}))
    done = subprocess.run(
        [*SCORING, "serve", str(config)], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode == 2, done.stderr
    assert TOKEN_ENV in done.stderr and "Traceback" not in done.stderr


def test_the_serve_command_on_a_taken_port_exits_2_saying_so(served, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = _scoring("serve", str(_config(tmp_path, served.job())), "--port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr
