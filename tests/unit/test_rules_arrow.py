"""The Arrow evaluator of scoring.core.rules and the online request check, held to the shared table of edge cases
(tests/rule_cases.py); the Spark evaluator is held to the same table in tests/integration/test_rules_spark.py."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rule_cases import (
    AGGREGATION_CASES,
    LIST_F64,
    ONLINE_CASES,
    ROW_CASES,
    TABLE_CASES,
    VALUE_CASES,
    same,
)

from scoring.core import batching, rules_arrow, tensors
from scoring.core.rules import FEATURE_LIMIT, RowCondition, ValueRule


def _ids(cases):
    return [c.name for c in cases]


@pytest.mark.parametrize("case", VALUE_CASES, ids=_ids(VALUE_CASES))
def test_the_arrow_evaluator_gives_each_feature_value_its_verdict(case):
    column = pa.array([case.value], type=case.kind)
    rule = rules_arrow.value_rule(case.kind)
    assert rules_arrow.invalid_values(column, rule).to_pylist() == [case.invalid]
    batch = pa.RecordBatch.from_arrays([column], names=["x"])
    assert (batching.invalid_mask(batch, ["x"]) is not None) is case.invalid
    assert (tensors.invalid_mask(batch, ["x"]) is not None) is case.invalid


def test_the_arrow_evaluator_judges_a_whole_column_at_once():
    """The table as one column per type (the cases' rows together, as a batch holds them), in chunks too."""
    for kind in {c.kind for c in VALUE_CASES}:
        cases = [c for c in VALUE_CASES if c.kind == kind]
        column = pa.chunked_array([pa.array([c.value], type=kind) for c in cases], type=kind)
        got = rules_arrow.invalid_values(column, rules_arrow.value_rule(kind)).to_pylist()
        assert got == [c.invalid for c in cases], kind


@pytest.mark.parametrize("case", VALUE_CASES, ids=_ids(VALUE_CASES))
def test_the_online_check_gives_each_request_value_the_same_verdict(case):
    assert (batching.feature_value_problem(case.value, case.kind) is not None) is case.online


@pytest.mark.parametrize("case", ONLINE_CASES, ids=_ids(ONLINE_CASES))
def test_the_online_check_refuses_values_no_column_of_the_input_type_holds(case):
    assert (batching.feature_value_problem(case.value, case.kind) is not None) is case.invalid


def test_the_online_check_says_why_in_the_words_it_always_used():
    assert batching.feature_value_problem(1e39, pa.float64()) == "1e+39 is beyond float32's range (3.4028235e+38)"
    assert batching.feature_value_problem(math.nan, pa.float32()) == "nan is not a finite number"
    assert batching.feature_value_problem(2.5, pa.int64()) == "expected an integer, got 2.5"
    assert batching.feature_value_problem(2**31, pa.int32()) == "2147483648 is out of int32's range"
    assert batching.feature_value_problem(1, pa.bool_()) == "expected true or false, got 1"
    assert batching.feature_value_problem("1", pa.float64()) == "expected a number, got '1'"
    assert batching.feature_value_problem({}, pa.float64()) == "expected a number, got dict"
    assert batching.feature_value_problem([0.0, math.inf], LIST_F64) == "element 1: inf is not a finite number"


def test_ragged_arrays_are_valid_values_but_a_ragged_batch_is_refused_or_padded():
    column = pa.array([[1.0], [1.0, 2.0, 3.0]], type=LIST_F64)
    assert rules_arrow.invalid_values(column, rules_arrow.value_rule(LIST_F64)).to_pylist() == [False, False]
    with pytest.raises(tensors.RaggedRows):
        tensors.matrix(column, tensors.TensorLayout("x", "x"), np.float32)
    padded = tensors.matrix(column, tensors.TensorLayout("x", "x", length=2, pad=-1.0), np.float32)
    assert padded.tolist() == [[1.0, -1.0], [1.0, 2.0]]


@pytest.mark.parametrize("case", ROW_CASES, ids=_ids(ROW_CASES))
def test_the_arrow_evaluator_sets_aside_the_rows_each_gate_condition_fails(case):
    batch = pa.RecordBatch.from_arrays([pa.array([case.value], type=case.kind)], names=["x"])
    assert rules_arrow.fails(batch, case.condition).to_pylist() == [case.fails]
    assert rules_arrow.set_aside_mask(batch, [case.condition]).to_pylist() == [case.fails]
    assert case.condition.fails(case.value) is case.fails  # the definition's own Python form


def test_a_row_failing_several_conditions_is_set_aside_once_with_every_reason():
    both = [RowCondition("not_null", "x", label="not_null(x)"), RowCondition("between", "x", 0, 1, label="b")]
    batch = pa.RecordBatch.from_arrays([pa.array([None, 2.0, 0.5])], names=["x"])
    assert rules_arrow.set_aside_mask(batch, both).to_pylist() == [True, True, False]
    assert rules_arrow.reasons(batch, both).to_pylist() == ["not_null(x)", "b", ""]


@pytest.mark.parametrize("case", AGGREGATION_CASES, ids=_ids(AGGREGATION_CASES))
@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_the_arrow_aggregations_stream_over_batches(case, chunk):
    column = pa.array(list(case.values), type=case.kind)
    batches = [pa.RecordBatch.from_arrays([column.slice(i, chunk)], names=["x"]) for i in range(0, len(column), chunk)]
    got = rules_arrow.aggregate(batches, case.aggregations)
    for aggregation in case.aggregations:
        assert same(got[aggregation], case.expected[aggregation.op]), (aggregation, got[aggregation])


@pytest.mark.parametrize("case", TABLE_CASES, ids=_ids(TABLE_CASES))
def test_the_arrow_table_checks_give_each_table_its_verdict(case):
    column = pa.array(list(case.values), type=case.kind)
    batches = [pa.RecordBatch.from_arrays([column.slice(i, 2)], names=["x"]) for i in range(0, len(column), 2)]
    ((holds, observed),) = rules_arrow.check_table(batches, [case.check]).values()
    assert holds is case.holds
    assert same(observed, case.observed), observed


_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([FEATURE_LIMIT, -FEATURE_LIMIT])


@given(st.lists(_FLOATS | st.none(), max_size=20))
def test_the_arrow_evaluator_and_the_online_check_agree_on_any_float64(values):
    column = pa.array(values, type=pa.float64())
    got = rules_arrow.invalid_values(column, ValueRule("float")).to_pylist()
    assert got == [batching.feature_value_problem(v, pa.float64()) is not None for v in values]


@given(st.lists(st.lists(_FLOATS | st.none(), max_size=4) | st.none(), max_size=10))
def test_an_array_is_invalid_exactly_when_it_is_null_or_an_element_is(rows):
    column = pa.array(rows, type=LIST_F64)
    got = rules_arrow.invalid_values(column, rules_arrow.value_rule(LIST_F64)).to_pylist()
    element = ValueRule("float")
    want = [r is None or any(v is None or not element.number_ok(v) for v in r) for r in rows]
    assert got == want
