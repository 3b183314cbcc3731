"""The rules, as data: which feature value is invalid, which row a gate sets aside, what a gate's table-level check
computes. Each runner evaluates the same definitions its own way: Arrow compute (:mod:`scoring.core.rules_arrow`),
Spark columns (:mod:`scoring.engine.rules_spark`), one Python value of an online request (:meth:`ValueRule.problem`).
``tests/rule_cases.py`` holds the edge cases every evaluator must agree on.

A valid feature value (:class:`ValueRule`), as the engine has always applied it:

- null is invalid, for every type;
- a floating-point value is invalid when it is NaN, +-inf, or beyond float32's range (``|x| > FEATURE_LIMIT``,
  3.4028234663852886e38): models take float32, so a larger value would reach them as infinity. The float64 value
  written ``3.4028235e38`` is just above the limit (invalid); the same literal stored in a float32 column rounds to
  float32's largest value (valid); the next float64 above the limit (``np.nextafter``) is invalid;
- an integer or decimal value is held to the same magnitude limit (only a decimal can exceed it); a boolean, a string
  or any other value only to not being null;
- an array (a list of numbers, nested or not) is invalid when it, or any list inside it, is null, or when any of its
  innermost elements is invalid by the rules above. An empty array is valid. Rows of one array column with
  different lengths (ragged) are not an invalid *value*: without ``input.tensors.<col>.length`` the batch is refused
  (:class:`~scoring.core.tensors.RaggedRows`), with it every array is padded or truncated to that length;
- a value that is not in a typed column yet (an online request's JSON value) must also be of the input's kind: a
  number (not a boolean) for a number input, and for an integer input a whole number (``2.0`` passes, ``2.5`` does
  not) within the integer type's range; ``true``/``false`` for a boolean input; a list for an array input; a
  number for any other input.

Which row a gate sets aside (:class:`RowCondition`): ``not_null`` sets aside nulls; ``between`` (inclusive bounds)
and ``in_set`` set aside non-null values outside the range or the set (nulls fail only ``not_null``, as in Great
Expectations). NaN orders above every number (Spark's order): it fails a ``between`` with a ``max`` and passes one
with only a ``min``; it is never in a set (allowed values are finite).

What a table-level check computes (:class:`TableCheck`): :class:`Aggregation` values over all rows (each one can be
computed in one pass over batches), and a verdict on them: ``row_count_between`` on the row count, ``mean_between``
on the mean of the non-null values (NaN when one is NaN; no mean, a failure, when there are none), ``unique`` on the
number of non-null rows whose value appears more than once (0 to pass).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

FEATURE_LIMIT = 3.4028234663852886e38
"""The largest feature magnitude accepted (float32's largest value): models here take float32 (ONNX
``tensor(float)``, Triton ``FP32``), so a larger value would reach the model as infinity."""

Family = Literal["float", "integer", "decimal", "boolean", "other"]
"""What the innermost values of a feature column are."""


@dataclasses.dataclass(frozen=True)
class ValueRule:
    """What a valid value of one feature column is (see the module's docstring)."""

    family: Family
    depth: int = 0
    """0 for a scalar column, 1 for an array, 2 for an array of arrays, ..."""
    bits: int | None = None
    """An integer family's width (8, 16, 32, 64), for the range an online value must be in; None: unsigned 64."""
    signed: bool = True
    limit: float = FEATURE_LIMIT

    @property
    def checks_nan(self) -> bool:
        """Whether NaN can occur (and is invalid)."""
        return self.family == "float"

    @property
    def checks_magnitude(self) -> bool:
        """Whether values beyond :attr:`limit` (infinities included) are invalid."""
        return self.family in ("float", "integer", "decimal")

    def element(self) -> ValueRule:
        """The rule for an element of an array (the same rule, one level down)."""
        if not self.depth:
            raise ValueError("a scalar rule has no elements")
        return dataclasses.replace(self, depth=self.depth - 1)

    def integer_range(self) -> tuple[int, int]:
        """The range of an integer family's values."""
        if self.bits is None:
            return (-(2**63), 2**64 - 1)
        if not self.signed:
            return (0, 2**self.bits - 1)
        return (-(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1)

    def number_ok(self, value: float | int) -> bool:
        """The value rule for a number already of the column's family: finite and within :attr:`limit`."""
        return not self.checks_magnitude or abs(value) <= self.limit  # NaN compares False: invalid too

    def problem(self, value: object) -> str | None:
        """Why `value`, a Python value not yet in a typed column (an online request's JSON value), is invalid for
        this rule, or None when it is valid. The reason is a phrase for a message:
        ``"1e+39 is beyond float32's range (3.4028235e+38)"``."""
        if self.family == "float" and not self.depth and type(value) in (float, int) and abs(value) <= self.limit:
            return None  # the common case, first (NaN compares False and takes the long way)
        if self.depth:
            if not isinstance(value, list | tuple):
                return f"expected an array, got {_shown(value)}"
            for i, item in enumerate(value):
                inner = self.element().problem(item)
                if inner is not None:
                    return f"element {i}: {inner}"
            return None
        if self.family == "boolean":
            return None if isinstance(value, bool) else f"expected true or false, got {_shown(value)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, got {_shown(value)}"
        if not abs(value) <= self.limit:
            if isinstance(value, float) and not math.isfinite(value):
                return f"{value!r} is not a finite number"
            return f"{value!r} is beyond float32's range ({self.limit:.8g})"
        if self.family == "integer":
            if isinstance(value, float):
                if not value.is_integer():
                    return f"expected an integer, got {value!r}"
                value = int(value)
            low, high = self.integer_range()
            if not low <= value <= high:
                return f"{value!r} is out of {self.describe()}'s range"
        return None

    def describe(self) -> str:
        """The type in words, as Arrow spells it (``int32``, ``uint64``)."""
        if self.family == "integer":
            return f"{'' if self.signed else 'u'}int{self.bits or 64}"
        return self.family


def _shown(value: object) -> str:
    return type(value).__name__ if isinstance(value, dict | list) else repr(value)[:80]


# -- rows a gate sets aside -------------------------------------------------------------------------------------------

RowKind = Literal["not_null", "between", "in_set"]
ROW_KINDS: tuple[str, ...] = ("not_null", "between", "in_set")


@dataclasses.dataclass(frozen=True)
class RowCondition:
    """A row-level expectation: the rows it sets aside (see the module's docstring)."""

    kind: RowKind
    column: str
    min: float | None = None
    """Inclusive lower bound (``between``); None for none."""
    max: float | None = None
    """Inclusive upper bound (``between``); None for none."""
    values: tuple[str | int | float, ...] = ()
    """Allowed values (``in_set``)."""
    label: str = ""
    """How a reason names it, e.g. ``between(column=x, min=0, max=1)``."""

    @classmethod
    def from_expectation(cls, e: Any) -> RowCondition:
        """The condition of a row-level :class:`~scoring.config.ExpectationConfig`."""
        if e.type not in ROW_KINDS:
            raise ValueError(f"{e.type} is not a row-level expectation")
        return cls(e.type, e.column, e.min, e.max, tuple(e.values or ()), e.describe())

    def fails(self, value: object) -> bool:
        """Whether a row whose column holds `value` (a Python value, None for null) is set aside."""
        if value is None:
            return self.kind == "not_null"
        if self.kind == "not_null":
            return False
        if self.kind == "between":
            nan = isinstance(value, float) and math.isnan(value)  # NaN orders above every number
            below = self.min is not None and not nan and value < self.min  # type: ignore[operator]
            above = self.max is not None and (nan or value > self.max)  # type: ignore[operator]
            return bool(below or above)
        return not any(_same(value, v) for v in self.values)


def _same(value: object, allowed: object) -> bool:
    numbers = isinstance(value, int | float) and isinstance(allowed, int | float)
    return value == allowed if numbers or type(value) is type(allowed) else False


def row_conditions(expectations: Sequence[Any]) -> tuple[RowCondition, ...]:
    """The conditions of the row-level expectations among `expectations` (in order)."""
    return tuple(RowCondition.from_expectation(e) for e in expectations if e.type in ROW_KINDS)


# -- what a table-level check computes --------------------------------------------------------------------------------

Op = Literal["rows", "non_null", "nulls", "sum", "mean", "min", "max", "distinct", "duplicated"]


@dataclasses.dataclass(frozen=True)
class Aggregation:
    """One value computed over all rows of a table, in one pass over its batches.

    - ``rows``: every row; ``non_null`` / ``nulls``: the column's non-null / null values;
    - ``sum`` and ``mean`` of the non-null values (NaN when one is NaN; None when there are none);
    - ``min`` / ``max`` of the non-null values, NaN ordered above every number (None when there are none);
    - ``distinct``: distinct non-null values; ``duplicated``: non-null rows whose value appears more than once.
    """

    op: Op
    column: str | None = None


TableKind = Literal["unique", "row_count_between", "mean_between"]
TABLE_KINDS: tuple[str, ...] = ("unique", "row_count_between", "mean_between")


@dataclasses.dataclass(frozen=True)
class TableCheck:
    """A table-level expectation: the aggregations it needs and its verdict on them."""

    kind: TableKind
    column: str | None = None
    min: float | None = None
    max: float | None = None
    label: str = ""

    @classmethod
    def from_expectation(cls, e: Any) -> TableCheck:
        """The check of a table-level :class:`~scoring.config.ExpectationConfig`."""
        if e.type not in TABLE_KINDS:
            raise ValueError(f"{e.type} is not a table-level expectation")
        return cls(e.type, e.column, e.min, e.max, e.describe())

    @property
    def aggregations(self) -> tuple[Aggregation, ...]:
        if self.kind == "row_count_between":
            return (Aggregation("rows"),)
        if self.kind == "mean_between":
            return (Aggregation("mean", self.column),)
        return (Aggregation("duplicated", self.column),)

    def observed(self, values: Mapping[Aggregation, Any]) -> Any:
        """The value the verdict is on: the row count, the mean, or the number of duplicated rows."""
        return values[self.aggregations[0]]

    def holds(self, values: Mapping[Aggregation, Any]) -> bool:
        """Whether the check passes, given its aggregations' values."""
        seen = self.observed(values)
        if self.kind == "unique":
            return seen == 0
        if seen is None or (isinstance(seen, float) and math.isnan(seen)):
            return False
        return (self.min is None or seen >= self.min) and (self.max is None or seen <= self.max)


def table_checks(expectations: Sequence[Any]) -> tuple[TableCheck, ...]:
    """The checks of the table-level expectations among `expectations` (in order)."""
    return tuple(TableCheck.from_expectation(e) for e in expectations if e.type in TABLE_KINDS)
