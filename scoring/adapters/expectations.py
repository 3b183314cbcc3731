"""Great Expectations 1.x on a Spark DataFrame: the job's expectations -> per-expectation results.

Validation runs inside Spark (Great Expectations' Spark execution engine); only summary statistics and a handful of
sample values come back to the driver (``result_format="SUMMARY"``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from scoring.config import ExpectationConfig

_LOGGER = logging.getLogger(__name__)
_LOCK = threading.Lock()
_CONTEXT: Any = None


@dataclasses.dataclass(frozen=True)
class ExpectationResult:
    """What one expectation found."""

    expectation: str
    """e.g. ``between(column=f01, min=-3, max=3)``"""
    type: str
    column: str | None
    success: bool
    element_count: int | None
    unexpected_count: int | None
    unexpected_fraction: float | None
    observed_value: Any
    """Table-level expectations: the observed value (row count, mean)."""
    sample: tuple[Any, ...]
    """A few unexpected values (row-level expectations)."""

    def describe_failure(self) -> str:
        if self.unexpected_count is not None:
            return (
                f"{self.expectation}: {self.unexpected_count} of {self.element_count} rows failed "
                f"({(self.unexpected_fraction or 0):.2%}), e.g. {list(self.sample)[:5]}"
            )
        return f"{self.expectation}: observed {self.observed_value!r}"


def _context():
    global _CONTEXT
    import great_expectations as gx

    with _LOCK:
        if _CONTEXT is None:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            _CONTEXT = gx.get_context(mode="ephemeral")
            # Progress goes through scoring's reporter; GE's own tqdm bars would flood Airflow logs.
            _CONTEXT.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        return _CONTEXT


def _to_gx(e: ExpectationConfig):
    import great_expectations.expectations as gxe

    match e.type:
        case "not_null":
            return gxe.ExpectColumnValuesToNotBeNull(column=e.column)
        case "between":
            return gxe.ExpectColumnValuesToBeBetween(column=e.column, min_value=e.min, max_value=e.max)
        case "in_set":
            return gxe.ExpectColumnValuesToBeInSet(column=e.column, value_set=list(e.values or []))
        case "unique":
            return gxe.ExpectColumnValuesToBeUnique(column=e.column)
        case "row_count_between":
            return gxe.ExpectTableRowCountToBeBetween(
                min_value=None if e.min is None else int(e.min), max_value=None if e.max is None else int(e.max)
            )
        case "mean_between":
            return gxe.ExpectColumnMeanToBeBetween(column=e.column, min_value=e.min, max_value=e.max)
    raise AssertionError(f"unknown expectation type {e.type}")


def run_expectations(df, expectations: Sequence[ExpectationConfig]) -> list[ExpectationResult]:
    """Validate `df` (a Spark DataFrame) against `expectations`; results in the same order."""
    import great_expectations as gx

    if not expectations:
        return []
    context = _context()
    tag = uuid.uuid4().hex[:12]
    source = context.data_sources.add_spark(name=f"scoring-{tag}")
    try:
        batch = source.add_dataframe_asset(name="rows").add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"scoring-{tag}"))
        for expectation in expectations:
            suite.add_expectation(_to_gx(expectation))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"scoring-{tag}", data=batch, suite=suite)
        )
        outcome = definition.run(batch_parameters={"dataframe": df}, result_format="SUMMARY")
    finally:
        _forget(context, tag)
    results = []
    for expectation, result in zip(expectations, outcome.results, strict=True):
        details = result.result or {}
        element_count = details.get("element_count")
        unexpected = details.get("unexpected_count")
        fraction = (
            (unexpected / element_count)
            if unexpected is not None and element_count
            else (0.0 if unexpected == 0 else None)
        )
        results.append(
            ExpectationResult(
                expectation=expectation.describe(),
                type=expectation.type,
                column=expectation.column,
                success=bool(result.success),
                element_count=element_count,
                unexpected_count=unexpected,
                unexpected_fraction=fraction,
                observed_value=_plain(details.get("observed_value")),
                sample=tuple(_plain(v) for v in (details.get("partial_unexpected_list") or [])[:5]),
            )
        )
    return results


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and the like become Python scalars."""
    if hasattr(value, "item"):
        return value.item()
    return value


def _forget(context, tag: str) -> None:
    """Drop the per-call suite, validation definition and data source from the shared ephemeral context."""
    for remove in (
        lambda: context.validation_definitions.delete(f"scoring-{tag}"),
        lambda: context.suites.delete(f"scoring-{tag}"),
        lambda: context.data_sources.delete(f"scoring-{tag}"),
    ):
        try:
            remove()
        except Exception:  # already gone, or never made because an earlier step failed
            _LOGGER.debug("cleanup of %s failed", tag, exc_info=True)
