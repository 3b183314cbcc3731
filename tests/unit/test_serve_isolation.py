"""One client never hurts another, without a server: the feature-value rule shared with the batch engine, and the
live scorer's micro-batches (a bad row fails only its own request; only backend faults count toward the breaker)."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pyarrow as pa
import pytest

from scoring.core.batching import FEATURE_LIMIT, feature_value_problem, invalid_mask
from scoring.core.score import ScoringSpec
from scoring.engine.live import (
    Breaker,
    LiveScorer,
    LiveUnavailable,
    RequestError,
    RowRejected,
    check_batch,
    features_batch,
    is_backend_fault,
)
from scoring.errors import BackendUnavailableError, InputError, ModelError, OutputValidationError

# -- one rule for a feature value ----------------------------------------------------------------------------------

EDGES = [
    0.0,
    -1.5,
    1,
    FEATURE_LIMIT,
    -FEATURE_LIMIT,
    float(np.nextafter(FEATURE_LIMIT, np.inf)),
    1e39,
    -1e39,
    1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    2**128,
    -(2**128),
]
"""Values both sides must judge alike: within float32, just beyond, far beyond, non-finite, big integers."""


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_a_request_value_is_refused_exactly_when_the_batch_engine_would_set_its_row_aside(value):
    batch = pa.RecordBatch.from_arrays([pa.array([float(value)], pa.float64())], names=["x"])
    batch_says_invalid = invalid_mask(batch, ["x"]) is not None
    request_says_invalid = feature_value_problem(value, pa.float32()) is not None
    assert request_says_invalid == batch_says_invalid, (value, batch_says_invalid)


@pytest.mark.parametrize(
    ("value", "kind", "valid"),
    [
        (2**31 - 1, pa.int32(), True),
        (2**31, pa.int32(), False),
        (-(2**31), pa.int32(), True),
        (2**63, pa.int64(), False),
        (3.0, pa.int64(), True),
        (3.5, pa.int64(), False),
        (True, pa.bool_(), True),
        (1, pa.bool_(), False),
        (True, pa.float32(), False),
        ("1", pa.float32(), False),
        (None, pa.float32(), False),
    ],
)
def test_a_request_value_must_fit_the_models_input_type(value, kind, valid):
    assert (feature_value_problem(value, kind) is None) == valid


def test_a_typed_batch_beyond_float32_is_refused_naming_the_input_and_row():
    batch = pa.RecordBatch.from_arrays([pa.array([1.0, 2.0]), pa.array([0.5, 1e39])], names=["a", "b"])
    with pytest.raises(RequestError) as raised:
        check_batch(batch, {"a": pa.float64(), "b": pa.float64()})
    assert raised.value.field == "b" and "row 1" in str(raised.value)


def test_backend_faults_are_told_by_type():
    assert is_backend_fault(BackendUnavailableError("down"))
    assert is_backend_fault(ModelError("the runtime failed"))
    assert not is_backend_fault(InputError("bad rows"))
    assert not is_backend_fault(OutputValidationError("NaN out"))
    assert not is_backend_fault(RequestError("a client's mistake"))


# -- micro-batches -------------------------------------------------------------------------------------------------

TYPES = {"x": pa.float64()}
POISON = 666.0
"""A feature value the fake model cannot take (how it fails is up to each test)."""


class _Model:
    """Doubles x; on a row holding POISON, does what `on_poison` says."""

    def __init__(self, on_poison: str) -> None:
        self.on_poison = on_poison
        self.calls = 0

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        self.calls += 1
        x = features.column("x").to_numpy()
        if self.on_poison == "down":
            raise BackendUnavailableError("the server is down")
        out = x * 2
        if (x == POISON).any():
            if self.on_poison == "nan":
                out = np.where(x == POISON, np.nan, out)
            elif self.on_poison == "raise":
                raise ModelError("the runtime refused the batch")
        return pa.RecordBatch.from_arrays([pa.array(out)], names=["prediction"])


def _scorer(model: _Model, failures: int = 3) -> LiveScorer:
    spec = ScoringSpec(features=("x",), passthrough=(), key=(), model="fake", output_schema=None)
    return LiveScorer(
        spec=spec,
        primary=lambda: model,
        primary_name="fake",
        window_s=0.2,  # wide: every request below lands in one micro-batch
        max_rows=10_000,
        breaker=Breaker(failures, 60.0),
    )


def _submit(scorer: LiveScorer, values: list[list[float]]) -> list[concurrent.futures.Future]:
    return [scorer.submit(features_batch([{"x": v} for v in rows], TYPES)) for rows in values]


def _outcome(future: concurrent.futures.Future):
    try:
        return future.result(timeout=30)
    except Exception as e:  # noqa: BLE001 - the outcome under test
        return e


def test_a_row_the_model_answers_with_nan_fails_only_its_own_request_and_never_opens_the_breaker():
    model = _Model("nan")
    scorer = _scorer(model)
    try:
        for _ in range(3):  # more bad requests than the breaker allows failures
            requests = [[1.0], [2.0, POISON], [3.0], [4.0, 5.0]]
            outcomes = [_outcome(f) for f in _submit(scorer, requests)]
            assert isinstance(outcomes[1], RowRejected), outcomes[1]
            assert outcomes[1].status == 422 and outcomes[1].field == "features"
            for rows, result in zip(requests, outcomes, strict=True):
                if POISON not in rows:
                    assert result.predictions.column("prediction").to_pylist() == [2 * v for v in rows]
        assert not scorer.breaker.is_open and scorer.ready()
    finally:
        scorer.close()


def test_a_row_the_runtime_refuses_fails_only_its_own_request_and_counts_as_a_backend_fault_once():
    model = _Model("raise")
    scorer = _scorer(model, failures=100)
    try:
        outcomes = [_outcome(f) for f in _submit(scorer, [[1.0], [POISON], [3.0]])]
        assert isinstance(outcomes[1], LiveUnavailable) and outcomes[1].kind == "backend_error", outcomes[1]
        assert [o.predictions.column("prediction").to_pylist() for o in (outcomes[0], outcomes[2])] == [[2.0], [6.0]]
        assert scorer.breaker._in_a_row == 0  # the healthy requests that followed closed the count again
    finally:
        scorer.close()


def test_a_backend_that_is_down_opens_the_breaker():
    model = _Model("down")
    scorer = _scorer(model, failures=2)
    try:
        for _ in range(2):
            outcomes = [_outcome(f) for f in _submit(scorer, [[1.0], [2.0]])]
            assert all(isinstance(o, LiveUnavailable) for o in outcomes)
        assert scorer.breaker.is_open and not scorer.ready()
    finally:
        scorer.close()
