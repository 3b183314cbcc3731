"""The online mode's pure parts: the precomputed index's records, the KServe v2 codec, request features, the breaker,
and the micro-batcher over a real (in-process, numpy) predictor."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import threading

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.core import kserve
from scoring.core.index import Layout, PrecomputedIndex, decode_hit, encode_rows, json_texts
from scoring.core.score import ScoringSpec
from scoring.engine.live import Breaker, LiveScorer, LiveUnavailable, RequestError, features_batch
from scoring.errors import BackendUnavailableError

T0 = dt.datetime(2026, 11, 1, 3, 4, 5, tzinfo=dt.UTC)


def _output(keys, ds, versions, scored, labels, probs, runs=None) -> pa.Table:
    n = len(keys)
    return pa.table(
        {
            "customer_id": pa.array(keys, pa.int64()),
            "ds": pa.array(ds),
            "model_name": ["churn"] * n,
            "model_version": versions,
            "model_uri": [f"models:/churn/{v}" for v in versions],
            "input_version": pa.array([0] * n, pa.int64()),
            "scoring_run_id": runs or [f"run-{v}" for v in versions],
            "scored_at": pa.array(scored, pa.timestamp("us", tz="UTC")),
            "label": pa.array(labels, pa.int64()),
            "probabilities": pa.array(probs, pa.list_(pa.float32())),
        }
    )


def test_a_record_is_the_row_as_json_with_its_lineage_and_the_newest_row_of_a_key_wins():
    later = T0 + dt.timedelta(days=1)
    table = _output(
        [1, 2, 1],
        ["2026-11-01", "2026-11-01", "2026-11-02"],
        ["1", "1", "2"],
        [T0, T0, later],
        [0, 1, 1],
        [[0.75, 0.25], [0.5, 0.5], [0.125, 0.875]],
    )
    layout = Layout.of(table.schema, ["customer_id"], ["ds"])
    assert layout.predictions == ("label", "probabilities")
    index = PrecomputedIndex.build(table, layout, table_version=4, source="t")
    assert len(index) == 2 and index.rows == 3 and index.table_version == 4
    hit = index.get("1")
    assert hit.model_version == "2" and hit.scored_at_us == int(later.timestamp() * 1e6)
    assert json.loads(hit.record) == {
        "model_name": "churn",
        "model_version": "2",
        "model_uri": "models:/churn/2",
        "scoring_run_id": "run-2",
        "scored_at": "2026-11-02T03:04:05.000000Z",
        "partition": {"ds": "2026-11-02"},
        "predictions": {"label": 1, "probabilities": [0.125, 0.875]},
    }
    assert decode_hit(hit.record) == hit
    assert index.get("3") is None and index.get(1) is None  # keys are text
    assert index.model_versions() == {"1": 1, "2": 1}
    assert dict(index.items()).keys() == {"1", "2"}


def test_composite_keys_are_tuples_of_texts():
    table = _output([1, 1], ["2026-11-01", "2026-11-02"], ["1", "1"], [T0, T0], [0, 1], [[1.0, 0.0], [0.0, 1.0]])
    layout = Layout.of(table.schema, ["customer_id", "ds"], [])
    index = PrecomputedIndex.build(table, layout, table_version=0, source="t")
    assert json.loads(index.get(("1", "2026-11-02")).record)["predictions"]["label"] == 1
    assert index.get("1") is None


def test_a_table_without_the_lineage_is_not_an_output_table():
    with pytest.raises(ValueError, match="scoring_run_id"):
        Layout.of(pa.schema([("customer_id", pa.int64()), ("model_name", pa.string())]), ["customer_id"], [])


_floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), _floats), min_size=1, max_size=20),
    lists=st.lists(st.one_of(st.none(), st.lists(_floats, max_size=4)), min_size=1, max_size=20),
    texts=st.lists(st.one_of(st.none(), st.text(max_size=8)), min_size=1, max_size=20),
)
def test_json_texts_match_a_plain_encoder_with_non_finite_numbers_as_null(values, lists, texts):
    def plain(value):
        """What a client should read back: float32 values (the text is float32's shortest form, so it parses back to
        the same float32), null for NaN, infinities and nulls."""
        if value is None:
            return None
        if isinstance(value, list):
            return [plain(v) for v in value]
        return np.float32(value) if np.isfinite(value) else None

    float_column = pa.chunked_array([pa.array(values, pa.float32())])
    texts_of_floats = json_texts(float_column).to_pylist()
    assert [plain(json.loads(t)) for t in texts_of_floats] == [plain(v) for v in float_column.to_pylist()]
    assert all("." in t or "e" in t or t == "null" for t in texts_of_floats)  # a float stays a float in JSON
    list_column = pa.chunked_array([pa.array(lists, pa.list_(pa.float32()))])
    got = [plain(json.loads(t)) for t in json_texts(list_column).to_pylist()]
    assert got == [plain(v) for v in list_column.to_pylist()]
    text_column = pa.chunked_array([pa.array(texts, pa.string())])
    assert [json.loads(t) for t in json_texts(text_column).to_pylist()] == texts


def test_records_encode_as_many_rows_as_the_table_has():
    table = _output(list(range(5)), ["d"] * 5, ["1"] * 5, [T0] * 5, [0] * 5, [[0.5, 0.5]] * 5)
    encoded = encode_rows(table, Layout.of(table.schema, ["customer_id"], ["ds"]))
    assert len(encoded) == 5 and [k for k, _ in encoded.items()] == ["0", "1", "2", "3", "4"]
    assert all(json.loads(record)["partition"] == {"ds": "d"} for _, record in encoded.items())


# -- request features ---------------------------------------------------------------------------------------------

TYPES = {"a": pa.float32(), "b": pa.int64()}


def test_features_become_a_typed_batch_in_the_models_order():
    batch = features_batch([{"b": 2, "a": 0.5}, {"a": 1, "b": 3.0}], TYPES)
    assert batch.schema.names == ["a", "b"] and batch.column("b").to_pylist() == [2, 3]


@pytest.mark.parametrize(
    ("row", "field", "says"),
    [
        ({"a": 1.0}, "b", "missing b"),
        ({"a": 1.0, "b": 1, "c": 2}, "c", "unknown c"),
        ({"a": "x", "b": 1}, "a", "expected a number"),
        ({"a": True, "b": 1}, "a", "expected a number"),
        ({"a": {"x": 1}, "b": 1}, "a", "expected a number, got dict"),
        ({"a": float("nan"), "b": 1}, "a", "not a finite number"),
        ({"a": 1.0, "b": 1.5}, "b", "expected an integer"),
        ({"a": 1e300, "b": 1}, "a", "beyond float32's range"),
        ({"a": 1e39, "b": 1}, "a", "beyond float32's range"),
        ({"a": 1.0, "b": 2**63}, "b", "out of int64's range"),
        ({"a": 10**400, "b": 1}, "a", "beyond float32's range"),
    ],
)
def test_a_bad_feature_is_a_request_error_naming_it(row, field, says):
    with pytest.raises(RequestError) as raised:
        features_batch([row], TYPES, where=["[3]"])
    assert raised.value.field == field and says in str(raised.value) and "[3]" in str(raised.value)


# -- KServe v2 ----------------------------------------------------------------------------------------------------

FEATURES = ["a", "b"]
V2_TYPES = {"a": pa.float32(), "b": pa.float32()}


def test_a_matrix_or_one_tensor_per_feature_and_binary_data_all_parse_to_the_same_rows():
    matrix = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}
    per_feature = {
        "inputs": [
            {"name": "b", "shape": [2], "datatype": "FP64", "data": [2, 4]},
            {"name": "a", "shape": [2, 1], "datatype": "FP32", "data": [1, 3]},
        ]
    }
    raw = np.array([[1, 2], [3, 4]], dtype=np.float32).tobytes()
    head = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}]}
    )
    parsed = [
        kserve.parse_request(orjson.dumps(matrix), header_length=None, features=FEATURES, types=V2_TYPES),
        kserve.parse_request(orjson.dumps(per_feature), header_length=None, features=FEATURES, types=V2_TYPES),
        kserve.parse_request(head + raw, header_length=len(head), features=FEATURES, types=V2_TYPES),
    ]
    for request in parsed:
        assert request.features.to_pydict() == {"a": [1.0, 3.0], "b": [2.0, 4.0]}


def test_outputs_come_back_as_json_or_binary_as_asked():
    predictions = pa.record_batch(
        {
            "label": pa.array([0, 1], pa.int64()),
            "probabilities": pa.array([[0.5, 0.5], [0.25, 0.75]], pa.list_(pa.float32())),
        }
    )
    request = kserve.InferRequest("7", predictions.slice(0, 0), frozenset({"probabilities"}), None)
    body, length = kserve.encode_response(
        predictions, model_name="m", model_version="3", request=request, parameters={"source": "live"}
    )
    head = json.loads(body[:length])
    assert head["id"] == "7" and head["model_version"] == "3"
    label, probs = head["outputs"]
    assert label == {"name": "label", "datatype": "INT64", "shape": [2, 1], "data": [0, 1]}  # as Triton gives it
    assert probs["shape"] == [2, 2] and probs["datatype"] == "FP32"
    assert np.frombuffer(body[length:], np.float32).tolist() == [0.5, 0.5, 0.25, 0.75]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{", 400, "not valid JSON"),
        (b"[]", 400, "JSON object"),
        (b'{"inputs": []}', 400, "non-empty list"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "STR", "data": [1]}]}', 400, "datatype 'STR'"),
        (b'{"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": [1]}]}', 400, "shape"),
        (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1]}]}', 422, "must hold 2 numbers"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": ["x"]}]}', 422, "non-numeric"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}', 422, "missing b"),
        (b'{"inputs": [{"name": "m", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}', 422, "3 columns"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}', 400, "'data' is missing"),
    ],
)
def test_a_malformed_inference_request_says_what_is_wrong(body, status, says):
    with pytest.raises(kserve.ProtocolError) as raised:
        kserve.parse_request(body, header_length=None, features=FEATURES, types=V2_TYPES)
    assert raised.value.status == status and says in str(raised.value)


def test_a_value_beyond_the_datatype_or_not_finite_is_refused_naming_it():
    beyond = b'{"inputs": [{"name": "m", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 1e39]}]}'
    with pytest.raises(kserve.ProtocolError, match="1e.39 is beyond the range of FP32"):
        kserve.parse_request(beyond, header_length=None, features=FEATURES, types=V2_TYPES)
    wide = b'{"inputs": [{"name": "m", "shape": [1, 2], "datatype": "INT32", "data": [1, 3000000000]}]}'
    with pytest.raises(kserve.ProtocolError, match="beyond the range of INT32"):
        kserve.parse_request(wide, header_length=None, features=FEATURES, types=V2_TYPES)
    raw = np.array([[1, np.nan]], dtype=np.float32).tobytes()
    head = orjson.dumps(
        {"inputs": [{"name": "m", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
    )
    with pytest.raises(kserve.ProtocolError, match="feature 'b': row 0 is nan, not a finite number"):
        kserve.parse_request(head + raw, header_length=len(head), features=FEATURES, types=V2_TYPES)


# -- the breaker and the micro-batcher ----------------------------------------------------------------------------


def test_the_breaker_opens_after_failures_in_a_row_and_a_success_closes_it():
    now = [100.0]
    breaker = Breaker(3, 10.0, clock=lambda: now[0])
    assert not breaker.failure() and not breaker.failure()
    breaker.success()  # in a row: a success resets the count
    assert not breaker.failure() and not breaker.failure() and breaker.failure()
    assert breaker.is_open and breaker.retry_after_s() == 10.0
    now[0] += 4
    assert breaker.retry_after_s() == 6.0
    breaker.success()
    assert not breaker.is_open


class Linear:
    """A real predictor: a fixed linear model in numpy; counts the batches it sees; fails while `down` is set."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.down = threading.Event()

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        if self.down.is_set():
            raise BackendUnavailableError("the backend is down")
        x = np.column_stack([c.to_numpy(zero_copy_only=False) for c in features.columns])
        self.batches.append(len(x))
        return pa.record_batch({"prediction": pa.array(x @ np.array([2.0, -1.0]))})


def _scorer(model: Linear, **kwargs) -> LiveScorer:
    spec = ScoringSpec(features=("a", "b"), passthrough=(), key=(), model="models:/linear/1")
    return LiveScorer(spec=spec, primary=lambda: model, primary_name="linear", **kwargs)


def test_concurrent_requests_are_scored_in_batches_each_getting_its_own_rows():
    model = Linear()
    scorer = _scorer(model, window_s=0.05, max_rows=1000, breaker=Breaker(3, 1.0))
    try:
        assert scorer.connect()
        rows = [features_batch([{"a": float(i), "b": 1.0}], V2_TYPES) for i in range(40)]
        futures = [scorer.submit(r) for r in rows]
        results = [f.result(timeout=10) for f in futures]
    finally:
        scorer.close()
    assert [r.predictions.column(0)[0].as_py() for r in results] == [2.0 * i - 1.0 for i in range(40)]
    assert sum(model.batches) == 40 and len(model.batches) < 40  # batches, not one call per request


def test_an_unavailable_backend_opens_the_breaker_then_requests_are_refused_at_once():
    model = Linear()
    scorer = _scorer(model, window_s=0.0, max_rows=10, breaker=Breaker(2, 60.0))
    batch = features_batch([{"a": 1.0, "b": 1.0}], V2_TYPES)
    try:
        assert scorer.connect()
        model.down.set()
        for _ in range(2):
            with pytest.raises(LiveUnavailable, match="the backend is down"):
                scorer.submit(batch).result(timeout=10)
        assert scorer.breaker.is_open and not scorer.ready()
        refused = scorer.submit(batch)
        assert refused.done()
        with pytest.raises(LiveUnavailable) as raised:
            refused.result()
        assert raised.value.kind == "breaker_open" and raised.value.retry_after_s > 1
    finally:
        scorer.close()


def test_with_a_fallback_an_open_breaker_still_answers_and_says_so():
    primary, fallback = Linear(), Linear()
    scorer = _scorer(primary, window_s=0.0, max_rows=10, breaker=Breaker(1, 60.0), fallback=lambda: fallback)
    batch = features_batch([{"a": 3.0, "b": 1.0}], V2_TYPES)
    try:
        assert scorer.connect()
        primary.down.set()
        first = scorer.submit(batch).result(timeout=10)  # fails on the primary, answered by the fallback
        second = scorer.submit(batch).result(timeout=10)  # breaker open: straight to the fallback
    finally:
        scorer.close()
    for result in (first, second):
        assert (result.backend, result.fallback, result.predictions.column(0)[0].as_py()) == ("embedded", True, 5.0)
    assert fallback.batches == [1, 1]


def test_a_closed_scorer_refuses_new_requests():
    scorer = _scorer(Linear(), window_s=0.0, max_rows=10, breaker=Breaker(1, 1.0))
    scorer.close()
    with pytest.raises(LiveUnavailable, match="stopping"):
        scorer.submit(features_batch([{"a": 1.0, "b": 1.0}], V2_TYPES)).result(timeout=1)
    assert isinstance(concurrent.futures.Future(), concurrent.futures.Future)


# -- the answer policy, from one snapshot, without HTTP ----------------------------------------------------------


def _policy(**serve):
    import types

    from scoring.adapters.metrics import ServeMetrics
    from scoring.config import ServeConfig
    from scoring.modes.online import Answerer, ServedModel, ServingSnapshot

    table = _output([1, 2], ["d", "d"], ["2", "1"], [T0, T0], [0, 1], [[0.5, 0.5], [0.25, 0.75]])
    index = PrecomputedIndex.build(table, Layout.of(table.schema, ["customer_id"], ["ds"]), table_version=3, source="t")
    config = ServeConfig(**serve)
    ref = types.SimpleNamespace(name="churn")
    prepared = types.SimpleNamespace(name="churn", version="2", uri="models:/churn/2", ref=ref)
    model = ServedModel(prepared, dict(TYPES), None)  # no live scorer: a live request is unavailable
    snap = ServingSnapshot(
        index=index, model=model, max_age_s=None, now=T0.timestamp(), index_stale=None, serve_stale=config.serve_stale
    )
    answerer = Answerer(
        serve=config, key_columns=["customer_id"], table="t", requested_uri="models:/churn@x", metrics=ServeMetrics("j")
    )
    return answerer, snap


def _run(coroutine):
    import asyncio

    return asyncio.run(coroutine)


def test_a_request_is_answered_item_by_item_from_one_snapshot_hit_stale_and_missing():
    answerer, snap = _policy()
    answer = _run(answerer.answer_request(snap, [{"key": 1}, {"key": 2}, {"key": 9}, {"key": True}]))
    assert answer.status == 200 and answer.source == "precomputed"
    hit, stale, missing, bad = orjson.loads(answer.body)
    assert hit["source"] == "precomputed" and hit["stale"] is False and hit["model_version"] == "2"
    assert stale["status"] == 404 and "scored by model version 1" in stale["error"]
    assert missing["status"] == 404 and "no precomputed score" in missing["error"]
    assert bad["status"] == 422 and bad["field"] == "key"


def test_a_stale_score_is_served_marked_stale_only_where_serve_stale_allows():
    answerer, snap = _policy(serve_stale=True)
    answer = _run(answerer.answer_request(snap, {"key": 2}))
    body = orjson.loads(answer.body)
    assert answer.status == 200 and body["stale"] is True and "version 1" in body["stale_reason"]
    assert answerer.answer_path(snap, ["2"]).status == 200


def test_live_unavailable_is_a_503_with_retry_after_and_a_stale_score_where_allowed():
    answerer, snap = _policy()
    answer = _run(answerer.answer_request(snap, {"key": 9, "features": {"a": 1.0, "b": 2}}))
    assert answer.status == 503 and int(answer.headers["Retry-After"]) >= 1
    answerer, snap = _policy(serve_stale=True)
    answer = _run(answerer.answer_request(snap, {"key": 2, "features": {"a": 1.0, "b": 2}}))
    assert answer.status == 200 and orjson.loads(answer.body)["stale"] is True


def test_too_many_items_is_a_413_and_an_empty_list_an_empty_answer():
    answerer, snap = _policy(max_batch_keys=2)
    assert _run(answerer.answer_request(snap, [{"key": 1}] * 3)).status == 413
    assert _run(answerer.answer_request(snap, [])).body == b"[]"


def test_a_v2_route_naming_another_model_or_version_is_a_404_from_the_snapshot():
    answerer, snap = _policy()
    assert answerer.served(snap, "churn", None) is None
    assert answerer.served(snap, "churn", "1").status == 404
    assert answerer.served(snap, "other", None).status == 404
    meta = orjson.loads(answerer.model_metadata(snap, "churn", "2").body)
    assert meta["versions"] == ["2"] and [i["datatype"] for i in meta["inputs"]] == ["FP32", "INT64"]


# -- errors: one hierarchy, picklable --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        RequestError("bad", field="a", status=404),
        LiveUnavailable("down", retry_after_s=7.0, kind="breaker_open"),
        kserve.ProtocolError("malformed", status=422, field="inputs"),
    ],
)
def test_online_errors_are_scoring_errors_that_pickle_with_their_fields(error):
    import pickle

    from scoring.errors import ScoringError

    back = pickle.loads(pickle.dumps(error))
    assert isinstance(back, ScoringError) and type(back) is type(error)
    assert str(back) == str(error) and vars(back) == vars(error)


def test_request_errors_are_still_value_errors_and_live_unavailable_is_transient():
    from scoring.errors import is_transient

    assert isinstance(RequestError("x"), ValueError) and isinstance(kserve.ProtocolError("x"), ValueError)
    assert is_transient(LiveUnavailable("x", retry_after_s=1.0, kind="deadline"))
    assert not is_transient(RequestError("x"))


# -- array features (input.tensors) --------------------------------------------------------------------------------


def test_array_features_are_typed_from_input_tensors_and_checked_element_by_element():
    from scoring.core.tensors import TensorLayout
    from scoring.engine.live import check_features, feature_types

    types = feature_types(
        [("ids", "int64"), ("mask", "int64"), ("x", "double")],
        ["token_ids", "attention", "x"],
        (TensorLayout("token_ids", "ids", 6), TensorLayout("attention", "mask")),
    )
    assert types == {"token_ids": pa.list_(pa.int64()), "attention": pa.list_(pa.int64()), "x": pa.float64()}
    batch = features_batch([{"token_ids": [1, 2], "attention": [1, 0], "x": 0.5}], types)
    assert batch.column("token_ids").to_pylist() == [[1, 2]]
    for row, field, words in [
        ({"token_ids": [1, 2.5], "attention": [1], "x": 0.0}, "token_ids", "element 1: expected an integer"),
        ({"token_ids": [1], "attention": 1, "x": 0.0}, "attention", "expected an array of numbers"),
        ({"token_ids": [1], "attention": [1e39], "x": 0.0}, "attention", "element 0: 1e+39 is beyond float32"),
    ]:
        with pytest.raises(RequestError) as raised:
            check_features(row, types)
        assert raised.value.field == field and words in str(raised.value)
