"""What is kept and what is set aside: invalid feature rows, rows the output cannot take, data-quality gates, invalid
predictions.

Each check splits a Spark DataFrame into the rows that go on and the rows set aside (shaped for the quarantine table,
with the reason), and reports what it did. Nothing here writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from scoring.adapters import delta
from scoring.config import GateConfig
from scoring.core import writable
from scoring.core.batching import FEATURE_LIMIT
from scoring.core.writable import WriteRule
from scoring.engine import quality
from scoring.errors import OutputError, ScoringError, from_spark_exception

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


def split(df, good, reason, stage: str, stamp: Stamp, *, count: bool = True) -> Split:
    """Rows of `df` where `good` holds go on; the others are set aside with `reason` (a text, or a string column
    that says it per row)."""
    from pyspark.sql import functions as F

    bad = df.where(~good)
    n = bad.count() if count else -1
    if n == 0:
        return Split(df, None, 0)
    why = F.lit(reason) if isinstance(reason, str) else reason
    frame = quality.quarantine_frame(bad, why, stage, stamp.passthrough, stamp.run_id, stamp.at)
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


# -- rows the output can take (scoring.core.writable, compiled into Spark conditions) ------------------------------

WRITE_STAGE = "write"
"""The quarantine stage of a row the output cannot take."""

_FLOAT_MAX = 3.4028234663852886e38


def write_rule(spark, table: str, schema, partition_by: Sequence[str], columns: Sequence[str]) -> WriteRule:
    """The rule for writing rows of `schema` into `table`: its partition paths, and a cast check for each of
    `columns` (key and partition columns) whose type differs from the existing table's. Raises
    :class:`~scoring.errors.OutputError` when a column's type never casts to the table's."""
    layout = delta.layout(spark, table)
    existing = {} if layout is None else {f.name: f.dataType.simpleString() for f in layout[1].fields}
    given = {f.name: f.dataType.simpleString() for f in schema.fields}
    try:
        return WriteRule.for_table(table, partition_by, given, existing, columns=columns)
    except ValueError as e:
        raise OutputError(
            f"output.table: {table}: {e}",
            hint="write to a new output.table, or give the column the output's type upstream",
        ) from None


def _escaped_class() -> str:
    """A Java regex character class of :data:`~scoring.core.writable.ESCAPED_CHARS`."""
    return "[" + "".join(f"\\x{{{ord(c):02X}}}" for c in sorted(writable.ESCAPED_CHARS)) + "]"


def segment_bytes(column: str, value):
    """Bytes of UTF-8 of the directory name Spark writes for `value` (a string column) of partition `column`: each
    escaped character (one byte) becomes three."""
    from pyspark.sql import functions as F

    name = writable.utf8_len(writable.escape_path_name(column)) + 1
    escaped = F.length(value) - F.length(F.regexp_replace(value, _escaped_class(), ""))
    default = writable.utf8_len(writable.DEFAULT_PARTITION)
    return F.lit(name) + F.when(value.isNull() | (value == ""), F.lit(default)).otherwise(
        F.octet_length(value) + 2 * escaped
    )


def unwritable_reason(rule: WriteRule):
    """A string column: why the row cannot be written (the first problem found), null when it can. The path
    reasons read as :meth:`WriteRule.path_problem` writes them; a cast reason names the column and the value."""
    from pyspark.sql import functions as F

    checks: list[tuple[Any, Any]] = []
    for check in rule.checked:
        col = F.col(f"`{check.column}`")
        cast = col.try_cast(check.target)
        if check.kind == "parse":
            bad = cast.isNull()
        elif check.target == "float":  # precision is given up by design; a value beyond float's range does not fit
            magnitude = F.abs(col.cast("double"))
            bad = cast.isNull() | ((magnitude > F.lit(_FLOAT_MAX)) & (magnitude < F.lit(float("inf"))))
        elif check.source in ("float", "double"):  # to an integral or decimal: a fraction or an overflow is lost
            bad = cast.isNull() | (cast.cast("double") != col.cast("double"))
        else:  # a narrower integral or decimal, a timestamp to a date: the value must come back
            bad = cast.isNull() | ~cast.cast(check.source).eqNullSafe(col)
        bad = col.isNotNull() & bad
        shown = F.substring(col.cast("string"), 1, 60)
        checks.append((bad, F.concat(F.lit(f"{check.column} = "), shown, F.lit(check.reason()))))
    total = F.lit(0)
    for column in rule.partition_by:
        value = F.col(f"`{column}`").cast("string")
        nul = value.isNotNull() & (F.length(value) != F.length(F.regexp_replace(value, "\\x{00}", "")))
        checks.append((nul, F.lit(writable.nul_reason(column))))
        size = segment_bytes(column, value)
        if rule.segment_max_bytes is not None:
            head, tail = writable.segment_reason_parts(column, rule.segment_max_bytes)
            checks.append((size > rule.segment_max_bytes, F.concat(F.lit(head), size.cast("string"), F.lit(tail))))
        total = total + size + 1
    if rule.partition_by:
        head, tail = writable.path_reason_parts(rule.is_local, rule.path_budget_bytes)
        checks.append((total > rule.path_budget_bytes, F.concat(F.lit(head), total.cast("string"), F.lit(tail))))
    if not checks:
        return F.lit(None).cast("string")
    out = F.when(checks[0][0], checks[0][1])
    for bad, why in checks[1:]:
        out = out.when(bad, why)
    return out


def conform(df, rule: WriteRule):
    """`df` with each key or partition column the output holds as another type cast to it (apply to the rows
    :func:`unwritable_reason` passed: a widening cast always fits, a checked one fits them)."""
    from pyspark.sql import functions as F

    for check in rule.casts:
        df = df.withColumn(check.column, F.col(f"`{check.column}`").cast(check.target))
    return df


def split_unwritable(df, rule: WriteRule, stamp: Stamp, *, count: bool = True) -> Split:
    """Rows the output can take (cast to its types) go on; the others are set aside with their reason, stage
    :data:`WRITE_STAGE`."""
    if not rule.can_fail:
        return Split(conform(df, rule), None, 0)
    why = unwritable_reason(rule)
    cut = split(df, why.isNull(), why, WRITE_STAGE, stamp, count=count)
    return Split(conform(cut.kept, rule), cut.set_aside, cut.count)
