"""One table of edge cases for the rules of ``scoring.core.rules``, with the verdict every evaluator must give:
the Arrow evaluator and the online request check (tests/unit/test_rules_arrow.py), the Spark evaluator
(tests/integration/test_rules_spark.py).

- :data:`VALUE_CASES`: one feature value in a typed column; `invalid` is the verdict on the value as the column holds
  it (a float32 column rounds a float64 literal first), `online_invalid` the online check's verdict on the Python
  value of a request (checked before any rounding; None when it is the same as `invalid`). :data:`ONLINE_CASES`:
  request values no typed column holds as given (an integer feature given a fraction, a boolean for a number).
- :data:`ROW_CASES`: one value of column ``x`` and a row-level expectation's condition; `fails`: set aside or not.
- :data:`AGGREGATION_CASES` and :data:`TABLE_CASES`: a column ``x`` of values; the aggregations' values, and each
  table-level check's verdict and observed value.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pyarrow as pa

from scoring.core.rules import FEATURE_LIMIT, Aggregation, RowCondition, TableCheck

INF = math.inf
NAN = math.nan
F32_MAX = float(np.finfo(np.float32).max)
ABOVE_F32_MAX = float(np.nextafter(FEATURE_LIMIT, INF))
"""The next float64 above float32's largest value: invalid in a float64 column; a float32 column rounds it back to
float32's largest value."""
with np.errstate(over="ignore"):
    F32_ABOVE_F32_MAX = float(np.nextafter(np.float32(F32_MAX), np.float32(INF)))
"""The next float32 above its largest value: infinity."""
LITERAL = 3.4028235e38
"""float32's largest value as usually written: as a float64 it is just above the limit."""

FLOAT64 = pa.float64()
FLOAT32 = pa.float32()
INT64 = pa.int64()
INT32 = pa.int32()
BOOL = pa.bool_()
STRING = pa.string()
LIST_F64 = pa.list_(pa.float64())
LIST_F32 = pa.list_(pa.float32())
LIST_I64 = pa.list_(pa.int64())


@dataclasses.dataclass(frozen=True)
class ValueCase:
    name: str
    kind: pa.DataType
    value: Any
    invalid: bool
    online_invalid: bool | None = None
    """The online check's verdict on `value` as a request's JSON value, when it differs from `invalid`."""

    @property
    def online(self) -> bool:
        return self.invalid if self.online_invalid is None else self.online_invalid


VALUE_CASES: tuple[ValueCase, ...] = (
    ValueCase("float64 zero", FLOAT64, 0.0, False),
    ValueCase("float64 negative zero", FLOAT64, -0.0, False),
    ValueCase("float64 smallest subnormal", FLOAT64, 5e-324, False),
    ValueCase("float64 null", FLOAT64, None, True),
    ValueCase("float64 NaN", FLOAT64, NAN, True),
    ValueCase("float64 +inf", FLOAT64, INF, True),
    ValueCase("float64 -inf", FLOAT64, -INF, True),
    ValueCase("float64 float32's largest value", FLOAT64, F32_MAX, False),
    ValueCase("float64 minus float32's largest value", FLOAT64, -F32_MAX, False),
    ValueCase("float64 3.4028235e38 (just above the limit)", FLOAT64, LITERAL, True),
    ValueCase("float64 the next float above the limit", FLOAT64, ABOVE_F32_MAX, True),
    ValueCase("float64 minus the next float above the limit", FLOAT64, -ABOVE_F32_MAX, True),
    ValueCase("float64 largest value", FLOAT64, float(np.finfo(np.float64).max), True),
    ValueCase("float32 zero", FLOAT32, 0.0, False),
    ValueCase("float32 largest value", FLOAT32, F32_MAX, False),
    ValueCase("float32 minus its largest value", FLOAT32, -F32_MAX, False),
    # The column rounds the float64 literal to float32's largest value; a request's value is checked unrounded.
    ValueCase("float32 3.4028235e38", FLOAT32, LITERAL, False, online_invalid=True),
    ValueCase("float32 the next float64 above the limit", FLOAT32, ABOVE_F32_MAX, False, online_invalid=True),
    ValueCase("float32 the next float32 above the limit (inf)", FLOAT32, F32_ABOVE_F32_MAX, True),
    ValueCase("float32 NaN", FLOAT32, NAN, True),
    ValueCase("float32 +inf", FLOAT32, INF, True),
    ValueCase("float32 -inf", FLOAT32, -INF, True),
    ValueCase("float32 null", FLOAT32, None, True),
    ValueCase("int64 zero", INT64, 0, False),
    ValueCase("int64 largest", INT64, 2**63 - 1, False),
    ValueCase("int64 smallest", INT64, -(2**63), False),
    ValueCase("int64 null", INT64, None, True),
    ValueCase("int32 largest", INT32, 2**31 - 1, False),
    ValueCase("int32 smallest", INT32, -(2**31), False),
    ValueCase("int32 null", INT32, None, True),
    ValueCase("boolean true", BOOL, True, False),
    ValueCase("boolean false", BOOL, False, False),
    ValueCase("boolean null", BOOL, None, True),
    ValueCase("array of float64", LIST_F64, [1.0, -2.5], False),
    ValueCase("empty array", LIST_F64, [], False),
    ValueCase("null array", LIST_F64, None, True),
    ValueCase("array holding a null", LIST_F64, [1.0, None], True),
    ValueCase("array holding NaN", LIST_F64, [1.0, NAN], True),
    ValueCase("array holding +inf", LIST_F64, [INF], True),
    ValueCase("array holding -inf", LIST_F64, [0.0, -INF], True),
    ValueCase("array holding float32's largest value", LIST_F64, [F32_MAX, -F32_MAX], False),
    ValueCase("array holding the next float above the limit", LIST_F64, [0.0, ABOVE_F32_MAX], True),
    ValueCase("array holding 3.4028235e38", LIST_F64, [LITERAL], True),
    ValueCase("float32 array holding 3.4028235e38", LIST_F32, [LITERAL], False, online_invalid=True),
    ValueCase("float32 array holding NaN", LIST_F32, [NAN], True),
    # Ragged rows (one column's arrays of different lengths) are each a valid value: the batch is refused as ragged,
    # or padded and truncated to input.tensors.<col>.length (see test_rules_arrow).
    ValueCase("ragged: a short array", LIST_F64, [1.0], False),
    ValueCase("ragged: a long array", LIST_F64, [1.0, 2.0, 3.0], False),
    ValueCase("array of int64", LIST_I64, [1, -(2**63)], False),
    ValueCase("array of int64 holding a null", LIST_I64, [1, None], True),
)


@dataclasses.dataclass(frozen=True)
class OnlineCase:
    """A request's JSON value that no typed column can hold as given: only the online check sees it."""

    name: str
    kind: pa.DataType
    value: Any
    invalid: bool


ONLINE_CASES: tuple[OnlineCase, ...] = (
    OnlineCase("an integer feature given a fraction", INT64, 2.5, True),
    OnlineCase("an integer feature given a whole float", INT64, 2.0, False),
    OnlineCase("an int32 feature given a fraction", INT32, -0.5, True),
    OnlineCase("an int32 feature beyond its range", INT32, 2**31, True),
    OnlineCase("an int64 feature beyond its range", INT64, 2**63, True),
    OnlineCase("an integer feature given NaN", INT64, NAN, True),
    OnlineCase("a float feature given an integer", FLOAT64, 3, False),
    OnlineCase("a float feature given a boolean", FLOAT64, True, True),
    OnlineCase("a float feature given a string", FLOAT64, "1.0", True),
    OnlineCase("a float feature given a list", FLOAT64, [1.0], True),
    OnlineCase("a boolean feature given 1", BOOL, 1, True),
    OnlineCase("an array feature given a number", LIST_F64, 1.0, True),
    OnlineCase("an array feature given integers", LIST_F64, [1, 2], False),
    OnlineCase("an int64 array feature given a fraction", LIST_I64, [1, 2.5], True),
)


@dataclasses.dataclass(frozen=True)
class RowCase:
    name: str
    condition: RowCondition
    kind: pa.DataType
    value: Any
    fails: bool


def _between(low: float | None, high: float | None) -> RowCondition:
    return RowCondition("between", "x", low, high, label=f"between(x, {low}, {high})")


def _in_set(*values: Any) -> RowCondition:
    return RowCondition("in_set", "x", values=values, label=f"in_set(x, {list(values)})")


NOT_NULL = RowCondition("not_null", "x", label="not_null(x)")
UNIT = _between(0.0, 1.0)
AT_LEAST_ZERO = _between(0.0, None)
AT_MOST_ONE = _between(None, 1.0)
SMALL_INT = _between(0.0, 10.0)
HALF = _between(0.5, None)
LETTERS = _in_set("a", "b")
ONE_TWO = _in_set(1, 2)
MIXED = _in_set(1, 2.5)

ROW_CASES: tuple[RowCase, ...] = (
    RowCase("not_null: null", NOT_NULL, FLOAT64, None, True),
    RowCase("not_null: NaN is not null", NOT_NULL, FLOAT64, NAN, False),
    RowCase("not_null: zero", NOT_NULL, FLOAT64, 0.0, False),
    RowCase("not_null: empty string", NOT_NULL, STRING, "", False),
    RowCase("not_null: null string", NOT_NULL, STRING, None, True),
    RowCase("between: the lower bound", UNIT, FLOAT64, 0.0, False),
    RowCase("between: the upper bound", UNIT, FLOAT64, 1.0, False),
    RowCase("between: just below", UNIT, FLOAT64, float(np.nextafter(0.0, -1.0)), True),
    RowCase("between: just above", UNIT, FLOAT64, float(np.nextafter(1.0, 2.0)), True),
    RowCase("between: null passes", UNIT, FLOAT64, None, False),
    RowCase("between: NaN fails a max", UNIT, FLOAT64, NAN, True),
    RowCase("between: +inf", UNIT, FLOAT64, INF, True),
    RowCase("between: -inf", UNIT, FLOAT64, -INF, True),
    RowCase("between min only: NaN passes", AT_LEAST_ZERO, FLOAT64, NAN, False),
    RowCase("between min only: +inf passes", AT_LEAST_ZERO, FLOAT64, INF, False),
    RowCase("between min only: -inf", AT_LEAST_ZERO, FLOAT64, -INF, True),
    RowCase("between max only: NaN", AT_MOST_ONE, FLOAT64, NAN, True),
    RowCase("between max only: -inf passes", AT_MOST_ONE, FLOAT64, -INF, False),
    RowCase("between max only: float32's largest", AT_MOST_ONE, FLOAT32, F32_MAX, True),
    RowCase("between float32: a bound", UNIT, FLOAT32, 1.0, False),
    RowCase("between float32: NaN", UNIT, FLOAT32, NAN, True),
    RowCase("between int: the lower bound", SMALL_INT, INT64, 0, False),
    RowCase("between int: the upper bound", SMALL_INT, INT64, 10, False),
    RowCase("between int: above", SMALL_INT, INT64, 11, True),
    RowCase("between int: below", SMALL_INT, INT64, -1, True),
    RowCase("between int: null passes", SMALL_INT, INT64, None, False),
    RowCase("between int: a fractional bound, below", HALF, INT64, 0, True),
    RowCase("between int: a fractional bound, above", HALF, INT64, 1, False),
    RowCase("in_set: in", LETTERS, STRING, "a", False),
    RowCase("in_set: out", LETTERS, STRING, "c", True),
    RowCase("in_set: case matters", LETTERS, STRING, "A", True),
    RowCase("in_set: empty string", LETTERS, STRING, "", True),
    RowCase("in_set: null passes", LETTERS, STRING, None, False),
    RowCase("in_set int: in", ONE_TWO, INT64, 2, False),
    RowCase("in_set int: out", ONE_TWO, INT64, 3, True),
    RowCase("in_set int: null passes", ONE_TWO, INT64, None, False),
    RowCase("in_set float: an int value", MIXED, FLOAT64, 1.0, False),
    RowCase("in_set float: a fraction", MIXED, FLOAT64, 2.5, False),
    RowCase("in_set float: close but out", MIXED, FLOAT64, 2.0, True),
    RowCase("in_set float: NaN is never in a set", MIXED, FLOAT64, NAN, True),
    RowCase("in_set float: +inf", MIXED, FLOAT64, INF, True),
)


def _agg(*ops: str) -> tuple[Aggregation, ...]:
    return tuple(Aggregation(op, None if op == "rows" else "x") for op in ops)  # type: ignore[arg-type]


ALL_OPS = ("rows", "non_null", "nulls", "sum", "mean", "min", "max", "distinct", "duplicated")
COUNTING_OPS = ("rows", "non_null", "nulls", "distinct", "duplicated")


@dataclasses.dataclass(frozen=True)
class AggregationCase:
    name: str
    kind: pa.DataType
    values: tuple[Any, ...]
    expected: dict[str, Any]
    """Op -> value (floats compared approximately, NaN equal to NaN)."""

    @property
    def aggregations(self) -> tuple[Aggregation, ...]:
        return _agg(*self.expected)


AGGREGATION_CASES: tuple[AggregationCase, ...] = (
    AggregationCase(
        "floats with nulls and a repeat",
        FLOAT64,
        (1.0, None, 3.0, 3.0, None),
        dict(rows=5, non_null=3, nulls=2, sum=7.0, mean=7 / 3, min=1.0, max=3.0, distinct=2, duplicated=2),
    ),
    AggregationCase(
        "floats with NaN and -inf: NaN orders above every number and equals NaN",
        FLOAT64,
        (1.0, NAN, NAN, -INF),
        dict(rows=4, non_null=4, nulls=0, sum=NAN, mean=NAN, min=-INF, max=NAN, distinct=3, duplicated=2),
    ),
    AggregationCase(
        "only NaN",
        FLOAT64,
        (NAN,),
        dict(rows=1, non_null=1, nulls=0, sum=NAN, mean=NAN, min=NAN, max=NAN, distinct=1, duplicated=0),
    ),
    AggregationCase(
        "only nulls",
        FLOAT64,
        (None, None),
        dict(rows=2, non_null=0, nulls=2, sum=None, mean=None, min=None, max=None, distinct=0, duplicated=0),
    ),
    AggregationCase(
        "no rows",
        FLOAT64,
        (),
        dict(rows=0, non_null=0, nulls=0, sum=None, mean=None, min=None, max=None, distinct=0, duplicated=0),
    ),
    AggregationCase(
        "integers",
        INT64,
        (1, 2, 2, None, 5, 2),
        dict(rows=6, non_null=5, nulls=1, sum=12, mean=2.4, min=1, max=5, distinct=3, duplicated=3),
    ),
    AggregationCase(
        "strings",
        STRING,
        ("a", "b", "a", None, ""),
        dict(rows=5, non_null=4, nulls=1, distinct=3, duplicated=2),
    ),
)


@dataclasses.dataclass(frozen=True)
class TableCase:
    name: str
    check: TableCheck
    kind: pa.DataType
    values: tuple[Any, ...]
    holds: bool
    observed: Any


ROWS_1_TO_3 = TableCheck("row_count_between", None, 1, 3, "row_count_between(1, 3)")
MEAN_0_TO_1 = TableCheck("mean_between", "x", 0, 1, "mean_between(x, 0, 1)")
UNIQUE = TableCheck("unique", "x", label="unique(x)")

TABLE_CASES: tuple[TableCase, ...] = (
    TableCase("row count: the upper bound", ROWS_1_TO_3, FLOAT64, (1.0, None, 2.0), True, 3),
    TableCase("row count: above", ROWS_1_TO_3, FLOAT64, (1.0, 2.0, 3.0, 4.0), False, 4),
    TableCase("row count: no rows", ROWS_1_TO_3, FLOAT64, (), False, 0),
    TableCase("mean: the bounds' middle, nulls left out", MEAN_0_TO_1, FLOAT64, (0.0, None, 1.0), True, 0.5),
    TableCase("mean: the upper bound", MEAN_0_TO_1, FLOAT64, (1.0, 1.0), True, 1.0),
    TableCase("mean: above", MEAN_0_TO_1, FLOAT64, (2.0, None), False, 2.0),
    TableCase("mean: NaN fails", MEAN_0_TO_1, FLOAT64, (0.5, NAN), False, NAN),
    TableCase("mean: no values fails", MEAN_0_TO_1, FLOAT64, (None, None), False, None),
    TableCase("mean of integers", MEAN_0_TO_1, INT64, (0, 1, 1), True, 2 / 3),
    TableCase("unique: nulls may repeat", UNIQUE, INT64, (1, 2, None, None), True, 0),
    TableCase("unique: a repeat", UNIQUE, INT64, (1, 1, 2), False, 2),
    TableCase("unique: NaN repeats", UNIQUE, FLOAT64, (NAN, NAN, 1.0), False, 2),
    TableCase("unique strings", UNIQUE, STRING, ("a", "b", ""), True, 0),
)


def same(got: Any, want: Any) -> bool:
    """Equal, floats approximately, NaN equal to NaN."""
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, float) or isinstance(got, float):
        if math.isnan(want) or math.isnan(got):
            return math.isnan(want) and math.isnan(got)
        return math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0) or got == want
    return got == want
