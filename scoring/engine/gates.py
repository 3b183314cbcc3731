"""What is kept and what is set aside: invalid feature rows, data-quality gates, invalid predictions.

Each check splits a Spark DataFrame into the rows that go on and the rows set aside (shaped for the quarantine table,
with the reason), and reports what it did. Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from scoring import quality
from scoring.config import GateConfig
from scoring.core.batching import FEATURE_LIMIT
from scoring.errors import ScoringError, from_spark_exception

_FLOATS = ("FloatType", "DoubleType")


@dataclasses.dataclass(frozen=True)
class Split:
    """Rows that go on, rows set aside (a quarantine-table frame, or None), how many were set aside, and the gate's
    report when a gate made the split."""

    kept: Any
    set_aside: Any | None
    count: int
    report: quality.GateReport | None = None


@dataclasses.dataclass(frozen=True)
class Stamp:
    """What each set-aside row is stamped with."""

    run_id: str
    at: dt.datetime
    passthrough: tuple[str, ...]
    """Key and partition columns, copied to the quarantine table (and used to remove the rows' old scores)."""


def valid_features(schema, features: Sequence[str]):
    """A Spark condition true for rows whose features are all non-null, finite and within float32's range
    (:data:`~scoring.core.batching.FEATURE_LIMIT`): the same rule the workers apply to each batch. An array feature
    is valid when it is non-null and every element is (:func:`scoring.core.tensors.invalid_mask`)."""
    from pyspark.sql import functions as F

    def ok(col, kind):
        good = col.isNotNull()
        if type(kind).__name__ in _FLOATS:
            good = good & ~F.isnan(col)
        return good & (F.abs(col.cast("double")) <= F.lit(FEATURE_LIMIT))

    condition = F.lit(True)
    for name in features:
        col, kind = F.col(f"`{name}`"), schema[name].dataType
        if type(kind).__name__ == "ArrayType":
            condition = condition & col.isNotNull() & F.forall(col, _element_check(ok, kind.elementType))
        else:
            condition = condition & ok(col, kind)
    return condition


def _element_check(ok, kind):
    """A one-argument lambda for Spark's ``forall`` (PySpark reads the arity: no default arguments)."""
    return lambda x: ok(x, kind)


def finite_predictions(schema):
    """A Spark condition true for rows whose floating-point predictions (scalars or arrays) are all finite."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType, FloatType

    condition = F.lit(True)
    for field in schema:
        col = F.col(f"`{field.name}`")
        if isinstance(field.dataType, FloatType | DoubleType):
            condition = condition & (col.isNull() | (~F.isnan(col) & (F.abs(col) < F.lit(float("inf")))))
        elif isinstance(field.dataType, ArrayType):
            kind = field.dataType
            while isinstance(kind, ArrayType) and isinstance(kind.elementType, ArrayType):
                col, kind = F.flatten(col), kind.elementType  # nested: multi-dimensional outputs
            if isinstance(kind.elementType, FloatType | DoubleType):
                condition = condition & ~F.coalesce(
                    F.exists(col, lambda x: F.isnan(x) | (F.abs(x) == F.lit(float("inf")))), F.lit(False)
                )
    return condition


def split(df, good, reason: str, stage: str, stamp: Stamp, *, count: bool = True) -> Split:
    """Rows of `df` where `good` holds go on; the others are set aside with `reason`."""
    from pyspark.sql import functions as F

    bad = df.where(~good)
    n = bad.count() if count else -1
    if n == 0:
        return Split(df, None, 0)
    frame = quality.quarantine_frame(bad, F.lit(reason), stage, stamp.passthrough, stamp.run_id, stamp.at)
    return Split(df.where(good), frame, n)


def apply_gate(df, gate: GateConfig, which: str, stamp: Stamp, *, source: str) -> Split:
    """Run a data-quality gate: raises :class:`~scoring.errors.QualityError` when it fails; with ``policy:
    quarantine``, the rows failing row-level expectations are set aside with the expectations they fail."""
    try:
        report = quality.evaluate(df, gate, which, source=source)
    except ScoringError:
        raise
    except Exception as e:
        raise (from_spark_exception(e) or e) from None
    if not report.quarantined:
        return Split(df, None, 0, report)
    bad = quality.bad_row_condition(gate.expectations)
    frame = quality.quarantine_frame(
        df.where(bad), quality.reason_column(gate.expectations), which, stamp.passthrough, stamp.run_id, stamp.at
    )
    return Split(df.where(~bad), frame, report.quarantined, report)


def union(frames: Sequence[Any]):
    """One quarantine frame of several (None when there are none)."""
    frames = [f for f in frames if f is not None]
    if not frames:
        return None
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame, allowMissingColumns=True)
    return out
