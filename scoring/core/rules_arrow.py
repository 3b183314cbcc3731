"""The rules of :mod:`scoring.core.rules` evaluated on Arrow batches with ``pyarrow.compute``: invalid feature values,
rows a gate sets aside (and why), and table-level aggregations that stream over batches."""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scoring.core.rules import Aggregation, RowCondition, TableCheck, ValueRule

_SIGNED = {pa.int8(): 8, pa.int16(): 16, pa.int32(): 32, pa.int64(): 64}
_UNSIGNED = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32, pa.uint64(): 64}


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


@functools.lru_cache(maxsize=256)
def value_rule(kind: pa.DataType) -> ValueRule:
    """The rule for a feature column (or a model input) of Arrow type `kind`."""
    depth = 0
    while _is_list(kind):
        kind, depth = kind.value_type, depth + 1
    if pa.types.is_floating(kind):
        return ValueRule("float", depth)
    if kind in _SIGNED:
        return ValueRule("integer", depth, _SIGNED[kind])
    if kind in _UNSIGNED:
        return ValueRule("integer", depth, _UNSIGNED[kind], signed=False)
    if pa.types.is_decimal(kind):
        return ValueRule("decimal", depth)
    if pa.types.is_boolean(kind):
        return ValueRule("boolean", depth)
    return ValueRule("other", depth)


def feature_rules(schema: pa.Schema, features: Sequence[str]) -> dict[str, ValueRule]:
    """Each feature column's rule, from its type in `schema`."""
    return {name: value_rule(schema.field(name).type) for name in features}


def _scalar_invalid(values: pa.Array, rule: ValueRule) -> np.ndarray:
    """Which of `values` (innermost, not lists) are invalid, as a numpy mask."""
    bad = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else np.zeros(len(values), bool)
    if rule.checks_magnitude:
        numbers = values.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            out = ~(np.abs(numbers) <= rule.limit)  # NaN (and a null, NaN here) compares False: out too
        bad = bad | out
    return bad


def invalid_values(column: pa.Array | pa.ChunkedArray, rule: ValueRule) -> pa.BooleanArray:
    """True for each value of `column` that `rule` refuses (never null)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pa.array(_invalid(column, rule), type=pa.bool_())


def _invalid(column: pa.Array, rule: ValueRule) -> np.ndarray:
    if not rule.depth:
        return _scalar_invalid(column, rule)
    bad = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else np.zeros(len(column), bool)
    bad = bad.copy()
    inner = pc.list_flatten(column)  # null lists drop out (they are counted above)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    bad[parents[_invalid(inner, rule.element())]] = True
    return bad


def invalid_mask(batch: pa.RecordBatch, rules: Mapping[str, ValueRule]) -> pa.BooleanArray:
    """True for each row of `batch` with an invalid value in any of the columns `rules` names."""
    bad = np.zeros(batch.num_rows, bool)
    for name, rule in rules.items():
        bad |= _invalid(_array(batch.column(name)), rule)
    return pa.array(bad, type=pa.bool_())


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


# -- rows a gate sets aside -------------------------------------------------------------------------------------------


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _value_set(column: pa.Array, values: Iterable[Any]) -> tuple[pa.Array, pa.Array]:
    """The column and the allowed values, in one type to compare them in (the column's: numbers as float64)."""
    if _numeric(column.type):
        numbers = []
        for v in values:
            try:
                numbers.append(float(v))
            except ValueError:
                continue  # a word is never equal to a number
        return column.cast(pa.float64(), safe=False), pa.array(numbers, type=pa.float64())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column, pa.array([v if isinstance(v, str) else str(v) for v in values], type=column.type)
    return column, pa.array(list(values)).cast(column.type)


def fails(batch: pa.RecordBatch, condition: RowCondition) -> pa.BooleanArray:
    """True for each row of `batch` that `condition` sets aside (never null)."""
    column = _array(batch.column(condition.column))
    if condition.kind == "not_null":
        return column.is_null()
    if condition.kind == "between":
        out = pa.array(np.zeros(len(column), bool))
        if condition.min is not None:
            out = pc.or_(out, pc.less(column, pa.scalar(float(condition.min))))
        if condition.max is not None:
            out = pc.or_(out, pc.greater(column, pa.scalar(float(condition.max))))
            if pa.types.is_floating(column.type):
                out = pc.or_(out, pc.is_nan(column))  # NaN orders above every number
    else:
        values, allowed = _value_set(column, condition.values)
        out = pc.and_(values.is_valid(), pc.invert(pc.is_in(values, value_set=allowed)))
    return pc.fill_null(out, False)  # nulls fail only not_null


def set_aside_mask(batch: pa.RecordBatch, conditions: Sequence[RowCondition]) -> pa.BooleanArray:
    """True for each row of `batch` that any of `conditions` sets aside."""
    out = pa.array(np.zeros(batch.num_rows, bool))
    for condition in conditions:
        out = pc.or_(out, fails(batch, condition))
    return out


def reasons(batch: pa.RecordBatch, conditions: Sequence[RowCondition]) -> pa.StringArray:
    """For each row, the labels of the conditions it fails, joined with ``"; "`` (empty when it fails none)."""
    out = np.full(batch.num_rows, "", dtype=object)
    for condition in conditions:
        bad = fails(batch, condition).to_numpy(zero_copy_only=False)
        out[bad] = [f"{seen}; {condition.label}" if seen else condition.label for seen in out[bad]]
    return pa.array(out, type=pa.string())


# -- table-level aggregations, one pass over batches ------------------------------------------------------------------

_NAN = ("NaN",)
"""The key NaN counts under (NaN equals NaN when values are grouped, as in Spark)."""


def _key(value: Any) -> Any:
    return _NAN if isinstance(value, float) and math.isnan(value) else value


class TableAggregator:
    """Table-level aggregations (:class:`~scoring.core.rules.Aggregation`) computed over batches as they stream:
    :meth:`update` with each batch, :meth:`result` at the end. ``distinct`` and ``duplicated`` keep a count per
    distinct value; every other aggregation keeps a few numbers."""

    def __init__(self, aggregations: Iterable[Aggregation]) -> None:
        self.aggregations = tuple(dict.fromkeys(aggregations))
        self._rows = 0
        self._non_null: collections.Counter[str] = collections.Counter()
        self._sum: dict[str, Any] = {}
        self._nan: set[str] = set()
        self._low: dict[str, Any] = {}
        self._high: dict[str, Any] = {}
        self._counts: dict[str, collections.Counter] = {}
        self._columns = {a.column for a in self.aggregations if a.column is not None}
        self._counted = {a.column for a in self.aggregations if a.op in ("distinct", "duplicated")}

    def update(self, batch: pa.RecordBatch) -> None:
        self._rows += batch.num_rows
        for name in self._columns:
            column = _array(batch.column(name))
            self._non_null[name] += len(column) - column.null_count
            if _numeric(column.type):
                self._numbers(name, column)
            if name in self._counted:
                counts = self._counts.setdefault(name, collections.Counter())
                for row in pc.value_counts(column.drop_null()).to_pylist():
                    counts[_key(row["values"])] += row["counts"]

    def _numbers(self, name: str, column: pa.Array) -> None:
        if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            self._nan.add(name)
        total = pc.sum(column).as_py()
        if total is not None:
            self._sum[name] = total if name not in self._sum else self._sum[name] + total
        numbers = pc.filter(column, pc.invert(pc.is_nan(column))) if pa.types.is_floating(column.type) else column
        low, high = pc.min_max(numbers).values()
        if low.as_py() is not None:
            self._low[name] = low.as_py() if name not in self._low else min(self._low[name], low.as_py())
            self._high[name] = high.as_py() if name not in self._high else max(self._high[name], high.as_py())

    def result(self) -> dict[Aggregation, Any]:
        return {a: self._value(a) for a in self.aggregations}

    def _value(self, a: Aggregation) -> Any:
        name = a.column
        if a.op == "rows":
            return self._rows
        assert name is not None, a
        n = self._non_null[name]
        if a.op == "non_null":
            return n
        if a.op == "nulls":
            return self._rows - n
        if a.op in ("sum", "mean"):
            if not n:
                return None
            total = math.nan if name in self._nan else self._sum.get(name)
            return total if a.op == "sum" else float(total) / n
        if a.op == "min":
            return self._low.get(name, math.nan if name in self._nan else None)
        if a.op == "max":
            return math.nan if name in self._nan else self._high.get(name)
        counts = self._counts.get(name, collections.Counter())
        if a.op == "distinct":
            return len(counts)
        return sum(c for c in counts.values() if c > 1)  # duplicated


def aggregate(batches: Iterable[pa.RecordBatch], aggregations: Iterable[Aggregation]) -> dict[Aggregation, Any]:
    """The values of `aggregations` over all of `batches`, in one pass."""
    aggregator = TableAggregator(aggregations)
    for batch in batches:
        aggregator.update(batch)
    return aggregator.result()


def check_table(batches: Iterable[pa.RecordBatch], checks: Sequence[TableCheck]) -> dict[TableCheck, tuple[bool, Any]]:
    """Each check's verdict and observed value over all of `batches`, in one pass."""
    values = aggregate(batches, [a for c in checks for a in c.aggregations])
    return {c: (c.holds(values), c.observed(values)) for c in checks}
