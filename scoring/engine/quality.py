"""Data-quality gates: the job's expectations on its input (before scoring) and on its output (before the commit).

A gate runs its expectations with Great Expectations on the Spark DataFrame, then decides:
- ``policy: fail``: any failed expectation fails the run, with a message naming the expectation, the column and what
  was observed; nothing is written.
- ``policy: quarantine``: rows failing row-level expectations (``not_null``, ``between``, ``in_set``) are split off
  inside Spark (the same conditions, as a filter) and written to the quarantine table with the reason, the run id and
  the original row; the rest goes on, as long as the quarantined fraction is at most ``max_bad_fraction``.
  Table-level expectations (``unique``, ``row_count_between``, ``mean_between``) still fail the run.

:func:`validate` runs one gate on its own, outside a run (e.g. to check a table by hand).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Literal

from scoring.adapters.expectations import ExpectationResult, run_expectations
from scoring.config import ExpectationConfig, GateConfig, JobConfig
from scoring.core import rules
from scoring.engine import rules_spark
from scoring.errors import QualityError, require_extra

_LOGGER = logging.getLogger(__name__)

QUARANTINE_REASON = "quarantine_reason"
"""Quarantine table column: why the row was set aside (the failed expectations, or null/NaN features)."""
QUARANTINE_STAGE = "quarantine_stage"
"""Quarantine table column: ``input`` (before scoring) or ``output`` (a scored row that failed the output gate)."""
QUARANTINE_ROW = "original_row"
"""Quarantine table column: the whole original row, as JSON."""


@dataclasses.dataclass(frozen=True)
class GateReport:
    """The outcome of one gate."""

    which: str
    """``input`` or ``output``"""
    success: bool
    """Whether every expectation held. A gate with ``policy: quarantine`` can fail row-level expectations and still
    let the run go on: then ``success`` is False and ``quarantined`` says how many rows it set aside."""
    policy: str
    rows: int | None
    quarantined: int
    results: tuple[ExpectationResult, ...]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["results"] = [dataclasses.asdict(r) for r in self.results]
        return out


def bad_row_condition(expectations: Sequence[ExpectationConfig]):
    """A Spark condition true for rows failing any row-level expectation (None when there are none), generated
    from their definitions (:class:`scoring.core.rules.RowCondition`).

    Nulls fail only ``not_null``, as in Great Expectations."""
    return rules_spark.set_aside(rules.row_conditions(expectations))


def reason_column(expectations: Sequence[ExpectationConfig]):
    """A Spark string column naming the row-level expectations each row fails."""
    return rules_spark.reasons(rules.row_conditions(expectations))


def evaluate(df, gate: GateConfig, which: Literal["input", "output"], *, source: str) -> GateReport:
    """Run `gate` on `df`. Raises :class:`QualityError` when the gate fails; returns the report otherwise."""
    if gate.expectations:
        require_extra("quality", f"quality.{which}")
    results = tuple(run_expectations(df, gate.expectations))
    rows = next((r.element_count for r in results if r.element_count is not None), None)
    failed = [r for r in results if not r.success]
    quarantined = 0
    if failed:
        row_level = {e.describe() for e in gate.expectations if e.row_level}
        table_failures = [r for r in failed if r.expectation not in row_level]
        if gate.policy == "fail" or table_failures:
            shown = table_failures or failed
            raise QualityError(
                f"{which} gate failed on {source}: " + "; ".join(r.describe_failure() for r in shown),
                hint=f"fix the data, or adjust quality.{which}.expectations; with quality.{which}.policy: quarantine, "
                "rows failing row-level expectations are set aside instead of failing the run",
            )
        quarantined = df.where(bad_row_condition(gate.expectations)).count()
        total = rows if rows else df.count()
        fraction = quarantined / total if total else 0.0
        if fraction > gate.max_bad_fraction:
            raise QualityError(
                f"{which} gate failed on {source}: {quarantined} of {total} rows ({fraction:.2%}) fail row-level "
                f"expectations, above quality.{which}.max_bad_fraction = {gate.max_bad_fraction:.2%}: "
                + "; ".join(r.describe_failure() for r in failed),
                hint="fix the data upstream, or raise max_bad_fraction if this share of bad rows is acceptable",
            )
    report = GateReport(which, not failed, gate.policy, rows, quarantined, results)
    _LOGGER.info(
        "%s gate on %s passed (%d expectations, %d rows quarantined)", which, source, len(results), quarantined
    )
    return report


def quarantine_frame(
    df, reason, stage: str, key: Sequence[str], run_id: str, scored_at, *, row: Sequence[str] | None = None
):
    """Rows of `df` shaped for the quarantine table: run id, time, stage, reason, the key (and partition) columns,
    the whole row (or the `row` columns) as JSON."""
    from pyspark.sql import functions as F

    from scoring import columns

    return df.select(
        F.lit(run_id).alias(columns.SCORING_RUN_ID),
        F.lit(scored_at).cast("timestamp").alias("quarantined_at"),
        F.lit(stage).alias(QUARANTINE_STAGE),
        reason.alias(QUARANTINE_REASON),
        *[F.col(f"`{k}`") for k in key],
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in (df.columns if row is None else row)])).alias(QUARANTINE_ROW),
    )


def validate(
    config: JobConfig,
    which: Literal["input", "output"],
    *,
    spark=None,
    where: str | None = None,
    run_id: str | None = None,
) -> GateReport:
    """Run the job's `which` gate on its own: on the latest input snapshot (filtered by `where`), or on the output
    table (filtered by `where` and by the run that wrote the rows). Raises :class:`QualityError` when it fails."""
    from pyspark.sql import functions as F

    from scoring import columns
    from scoring.adapters import delta
    from scoring.adapters.spark import get_session

    gate = config.quality.input if which == "input" else config.quality.output
    if not gate.expectations:
        return GateReport(which, True, gate.policy, None, 0, ())
    spark = spark or get_session(config.spark.master, config.spark.conf, app_name=f"scoring-validate:{config.name}")
    table = config.input.table if which == "input" else config.output.table
    df, version = delta.read_snapshot(
        spark, table, config.input.version if which == "input" else None, key=f"{which}.table"
    )
    if where:
        df = df.where(where)
    if run_id and which == "output":
        df = df.where(F.col(columns.SCORING_RUN_ID) == run_id)
    source = f"{table}@{version}" + (f" where {where}" if where else "") + (f" run {run_id}" if run_id else "")
    return evaluate(df, gate, which, source=source)
