"""The Spark evaluator of scoring.core.rules held to the shared table of edge cases (tests/rule_cases.py), the same
table the Arrow evaluator and the online check are held to (tests/unit/test_rules_arrow.py). One DataFrame per
column type and one collect per rule kind keep it fast."""

from __future__ import annotations

import collections
from decimal import Decimal

import pyarrow as pa
import pytest
from rule_cases import AGGREGATION_CASES, ROW_CASES, TABLE_CASES, VALUE_CASES, same

from scoring.core.rules import Aggregation, RowCondition, TableCheck, ValueRule
from scoring.engine import gates, quality, rules_spark

pytestmark = pytest.mark.integration


def _spark_type(kind: pa.DataType):
    from pyspark.sql import types as T

    if pa.types.is_list(kind):
        return T.ArrayType(_spark_type(kind.value_type), containsNull=True)
    return {
        pa.float64(): T.DoubleType(),
        pa.float32(): T.FloatType(),
        pa.int64(): T.LongType(),
        pa.int32(): T.IntegerType(),
        pa.bool_(): T.BooleanType(),
        pa.string(): T.StringType(),
    }[kind]


def _frame(spark, kind: pa.DataType, values):
    """Column ``x`` of `kind` holding `values`, in order (column ``i``)."""
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("i", T.IntegerType()), T.StructField("x", _spark_type(kind), True)])
    return spark.createDataFrame([(i, v) for i, v in enumerate(values)], schema)


def _by_kind(cases):
    groups = collections.defaultdict(list)
    for case in cases:
        groups[case.kind].append(case)
    return groups.items()


def test_the_spark_evaluator_gives_each_feature_value_its_verdict(spark):
    wrong = []
    for kind, cases in _by_kind(VALUE_CASES):
        df = _frame(spark, kind, [c.value for c in cases])
        assert rules_spark.value_rule(df.schema["x"].dataType) == _arrow_rule(kind)
        rows = df.select("i", (~gates.valid_features(df.schema, ["x"])).alias("bad")).orderBy("i").collect()
        wrong += [(c.name, r.bad) for c, r in zip(cases, rows, strict=True) if r.bad is not c.invalid]
    assert not wrong, f"cases the Spark evaluator judges otherwise: {wrong}"


def _arrow_rule(kind: pa.DataType) -> ValueRule:
    from scoring.core.rules_arrow import value_rule

    return value_rule(kind)


def test_a_decimal_feature_is_held_to_the_same_magnitude_limit(spark):
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField("x", T.DecimalType(38, 0))])
    df = spark.createDataFrame([(Decimal(10) ** 37,), (None,)], schema)
    assert rules_spark.value_rule(schema["x"].dataType) == ValueRule("decimal")
    assert [r.ok for r in df.select(gates.valid_features(df.schema, ["x"]).alias("ok")).collect()] == [True, False]


def test_the_spark_evaluator_sets_aside_the_rows_each_gate_condition_fails(spark):
    wrong = []
    for kind, cases in _by_kind(ROW_CASES):
        df = _frame(spark, kind, [c.value for c in cases])
        conditions = list(dict.fromkeys(c.condition for c in cases))
        columns = [rules_spark.fails(c).alias(f"c{n}") for n, c in enumerate(conditions)]
        rows = df.select("i", *columns).orderBy("i").collect()
        for case, row in zip(cases, rows, strict=True):
            got = row[f"c{conditions.index(case.condition)}"]
            if got is not case.fails:
                wrong.append((case.name, got))
    assert not wrong, f"cases the Spark evaluator judges otherwise: {wrong}"


def test_the_gate_conditions_generated_for_spark_set_aside_once_with_every_reason(spark):
    from scoring.config import ExpectationConfig

    expectations = [
        ExpectationConfig(type="not_null", column="x"),
        ExpectationConfig(type="between", column="x", min=0, max=1),
        ExpectationConfig(type="unique", column="x"),
    ]
    df = _frame(spark, pa.float64(), [None, 2.0, 0.5])
    rows = (
        df.select(
            "i",
            quality.bad_row_condition(expectations).alias("bad"),
            quality.reason_column(expectations).alias("why"),
        )
        .orderBy("i")
        .collect()
    )
    assert [(r.bad, r.why) for r in rows] == [
        (True, "not_null(column=x)"),
        (True, "between(column=x, min=0, max=1)"),
        (False, ""),
    ]


def test_the_spark_aggregations_match_the_table(spark):
    wrong = []
    for case in AGGREGATION_CASES:
        got = rules_spark.aggregate(_frame(spark, case.kind, case.values), case.aggregations)
        wrong += [(case.name, a.op, got[a]) for a in case.aggregations if not same(got[a], case.expected[a.op])]
    assert not wrong, f"aggregations Spark computes otherwise: {wrong}"


def test_the_spark_table_checks_give_each_table_its_verdict(spark):
    wrong = []
    for case in TABLE_CASES:
        ((holds, observed),) = rules_spark.check_table(_frame(spark, case.kind, case.values), [case.check]).values()
        if holds is not case.holds or not same(observed, case.observed):
            wrong.append((case.name, holds, observed))
    assert not wrong, f"table checks Spark judges otherwise: {wrong}"


def test_rows_aggregation_needs_no_column(spark):
    assert rules_spark.aggregate(_frame(spark, pa.float64(), [1.0, None]), [Aggregation("rows")]) == {
        Aggregation("rows"): 2
    }


def test_the_definitions_agree_with_great_expectations_on_every_case(spark):
    """The gate still reports through Great Expectations: on one wide frame holding every row and table case (each
    group in its own column, padded with nulls), GE's unexpected counts and verdicts are the definitions'."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from scoring.adapters.expectations import run_expectations
    from scoring.config import ExpectationConfig

    groups = collections.defaultdict(list)
    for case in ROW_CASES:
        groups[(case.kind, case.condition)].append(case.value)
    columns = [(f"r{n}", kind, values, cond) for n, ((kind, cond), values) in enumerate(groups.items())]
    columns += [(f"t{n}", c.kind, c.values, c.check) for n, c in enumerate(TABLE_CASES) if c.check.column]
    height = max(len(values) for _, _, values, _ in columns)
    schema = T.StructType([T.StructField(name, _spark_type(kind), True) for name, kind, _, _ in columns])
    padded = [list(values) + [None] * (height - len(values)) for _, _, values, _ in columns]
    df = spark.createDataFrame(list(zip(*padded, strict=True)), schema).cache()

    def expectation(name, rule):
        return ExpectationConfig(
            type=rule.kind, column=name, min=rule.min, max=rule.max, values=list(getattr(rule, "values", ())) or None
        )

    table = [TableCheck("row_count_between", None, 1, height - 1), TableCheck("row_count_between", None, 1, height)]
    configs = [expectation(name, rule) for name, _, _, rule in columns] + [expectation(None, t) for t in table]
    results = run_expectations(df, configs)
    rows = [(name, rule) for name, _, _, rule in columns if isinstance(rule, RowCondition)]
    counts = df.agg(*[F.sum(rules_spark.fails(_named(rule, name)).cast("int")).alias(name) for name, rule in rows])
    counts = counts.first().asDict()
    checks = [_named(rule, name) for name, _, _, rule in columns if isinstance(rule, TableCheck)] + table
    verdicts = list(rules_spark.check_table(df, checks).values())
    df.unpersist()
    wrong = []
    for (name, rule), result in zip(rows, results, strict=False):
        if result.unexpected_count != counts[name] or result.success is not (counts[name] == 0):
            wrong.append((rule.label, result.unexpected_count, counts[name]))
    for check, result, (holds, _) in zip(checks, results[len(rows) :], verdicts, strict=True):
        if result.success is not holds:
            wrong.append((check.label, result.success, holds))
    assert not wrong, f"GE and the definitions disagree: {wrong}"


def _named(rule, column: str):
    import dataclasses

    return dataclasses.replace(rule, column=column)
