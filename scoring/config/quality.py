"""The ``quality:`` section: data-quality gates on the input and on the scored rows."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from scoring.config.base import (
    _Float,
    _kind,
    _show,
    _Strict,
)


class ExpectationConfig(_Strict):
    """One data-quality expectation, run with Great Expectations on the Spark DataFrame (nothing is collected).

    Row-level types (``not_null``, ``between``, ``in_set``) can quarantine the rows that fail them; table-level types
    (``unique``, ``row_count_between``, ``mean_between``) pass or fail the whole gate.
    """

    type: Literal["not_null", "between", "in_set", "unique", "row_count_between", "mean_between"]
    """What to expect: ``not_null``, ``between`` (min/max, inclusive), ``in_set`` (values), ``unique``,
    ``row_count_between`` (min/max rows), ``mean_between`` (min/max of the column's mean)."""
    column: str | None = None
    """The column (every type but ``row_count_between``)."""
    min: _Float | None = None
    """Lower bound, inclusive (``between``, ``row_count_between``, ``mean_between``). A finite number, at most
    ``max``; leave it out for no lower bound."""
    max: _Float | None = None
    """Upper bound, inclusive (``between``, ``row_count_between``, ``mean_between``). A finite number, at least
    ``min``; leave it out for no upper bound."""
    values: list[str | int | float] | None = None
    """Allowed values (``in_set``): strings or finite numbers."""

    @field_validator("values", mode="before")
    @classmethod
    def _plain_values(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"item {i} is {item}: allowed values are strings or finite numbers")
                if not isinstance(item, (str, int, float)):
                    raise ValueError(
                        f"item {i} is {_kind(item)} ({_show(item)}): allowed values are strings or finite numbers"
                    )
        return value

    @model_validator(mode="after")
    def _arguments(self) -> ExpectationConfig:
        if self.type != "row_count_between" and not self.column:
            raise ValueError(f"expectation {self.type} needs a column")
        if self.type in ("between", "row_count_between", "mean_between") and self.min is None and self.max is None:
            raise ValueError(f"expectation {self.type} needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"expectation {self.type} has min {self.min:g} above max {self.max:g}: swap them")
        if self.type == "in_set" and not self.values:
            raise ValueError("expectation in_set needs values")
        return self

    @property
    def row_level(self) -> bool:
        return self.type in ("not_null", "between", "in_set")

    def describe(self) -> str:
        args = [f"column={self.column}"] if self.column else []
        args += [f"min={self.min:g}"] if self.min is not None else []
        args += [f"max={self.max:g}"] if self.max is not None else []
        args += [f"values={self.values}"] if self.values else []
        return f"{self.type}({', '.join(args)})"


class GateConfig(_Strict):
    """A data-quality gate: expectations and what to do when rows fail them."""

    expectations: list[ExpectationConfig] = []
    policy: Literal["fail", "quarantine"] = "fail"
    """``fail``: any failed expectation fails the run (nothing is written). ``quarantine``: rows failing row-level
    expectations go to the quarantine table and the rest is scored, as long as their fraction is at most
    ``max_bad_fraction``; table-level expectations still fail the run."""
    max_bad_fraction: _Float = Field(default=0.0, ge=0.0, le=1.0)
    """With ``quarantine``: the largest fraction of rows that may be quarantined (0 to 1); above it the run fails."""


class QualityConfig(_Strict):
    input: GateConfig = GateConfig()
    """Checked on the selected input rows before scoring."""
    output: GateConfig = GateConfig()
    """Checked on the scored rows before they are committed."""
    quarantine_table: str | None = None
    """Delta table for quarantined rows (reason, run id, the original row). Default: ``<output.table>_quarantine``."""
