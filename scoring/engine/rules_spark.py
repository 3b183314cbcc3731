"""The rules of :mod:`scoring.core.rules` evaluated by Spark: Column expressions generated from the definitions
(valid feature values, rows a gate sets aside and why), and table-level aggregations in one pass over a DataFrame."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scoring.core.rules import Aggregation, RowCondition, TableCheck, ValueRule

_SIGNED = {"ByteType": 8, "ShortType": 16, "IntegerType": 32, "LongType": 64}


def value_rule(data_type) -> ValueRule:
    """The rule for a feature column of Spark type `data_type`."""
    depth = 0
    while type(data_type).__name__ == "ArrayType":
        data_type, depth = data_type.elementType, depth + 1
    name = type(data_type).__name__
    if name in ("FloatType", "DoubleType"):
        return ValueRule("float", depth)
    if name in _SIGNED:
        return ValueRule("integer", depth, _SIGNED[name])
    if name == "DecimalType":
        return ValueRule("decimal", depth)
    if name == "BooleanType":
        return ValueRule("boolean", depth)
    return ValueRule("other", depth)


def _col(name: str):
    from pyspark.sql import functions as F

    return F.col(f"`{name}`")


def valid_value(col, rule: ValueRule):
    """A condition true where `col` holds a value `rule` accepts (never null)."""
    from pyspark.sql import functions as F

    good = col.isNotNull()
    if rule.depth:
        return good & F.forall(col, _element_check(rule.element()))
    if rule.checks_nan:
        good = good & ~F.isnan(col)
    if rule.checks_magnitude:
        good = good & (F.abs(col.cast("double")) <= F.lit(rule.limit))
    return good


def _element_check(rule: ValueRule):
    """A one-argument lambda for Spark's ``forall`` (PySpark reads the arity: no default arguments)."""
    return lambda x: valid_value(x, rule)


def valid_feature(schema, name: str):
    """A condition true for rows whose feature `name` (a column of `schema`, a Spark StructType) holds a valid value."""
    return valid_value(_col(name), value_rule(schema[name].dataType))


def valid_features(schema, features: Sequence[str]):
    """A condition true for rows whose `features` (columns of `schema`, a Spark StructType) all hold valid values."""
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for name in features:
        condition = condition & valid_feature(schema, name)
    return condition


def fails(condition: RowCondition):
    """A condition true for rows that `condition` sets aside (never null). Spark orders NaN above every number, as
    the definition does."""
    from pyspark.sql import functions as F

    col = F.col(condition.column)
    if condition.kind == "not_null":
        return col.isNull()
    if condition.kind == "between":
        bad = F.lit(False)
        if condition.min is not None:
            bad = bad | (col < F.lit(condition.min))
        if condition.max is not None:
            bad = bad | (col > F.lit(condition.max))
        return col.isNotNull() & bad
    return col.isNotNull() & ~col.isin(list(condition.values))


def set_aside(conditions: Sequence[RowCondition]):
    """A condition true for rows that any of `conditions` sets aside (None when there are none)."""
    out = None
    for condition in conditions:
        bad = fails(condition)
        out = bad if out is None else (out | bad)
    return out


def reasons(conditions: Sequence[RowCondition]):
    """A string column: the labels of the conditions each row fails, joined with ``"; "``."""
    from pyspark.sql import functions as F

    return F.concat_ws("; ", *[F.when(fails(c), F.lit(c.label)) for c in conditions])


# -- table-level aggregations -----------------------------------------------------------------------------------------


def _expression(a: Aggregation):
    from pyspark.sql import functions as F

    if a.op == "rows":
        return F.count(F.lit(1))
    col = _col(a.column or "")
    return {
        "non_null": lambda: F.count(col),
        "nulls": lambda: F.count(F.lit(1)) - F.count(col),
        "sum": lambda: F.sum(col),
        "mean": lambda: F.avg(col),
        "min": lambda: F.min(col),
        "max": lambda: F.max(col),
        "distinct": lambda: F.countDistinct(col),
    }[a.op]()


def aggregate(df, aggregations: Iterable[Aggregation]) -> dict[Aggregation, Any]:
    """The values of `aggregations` over `df`: one aggregation query, and one more per ``duplicated`` column."""
    from pyspark.sql import functions as F

    wanted = tuple(dict.fromkeys(aggregations))
    simple = [a for a in wanted if a.op != "duplicated"]
    out: dict[Aggregation, Any] = {}
    if simple:
        row = df.agg(*[_expression(a).alias(f"_a{i}") for i, a in enumerate(simple)]).first()
        out.update({a: _plain(row[f"_a{i}"]) for i, a in enumerate(simple)})
    for a in wanted:
        if a.op == "duplicated":
            col = _col(a.column or "")
            groups = df.where(col.isNotNull()).groupBy(col).count().where(F.col("count") > 1)
            out[a] = int(groups.agg(F.sum("count")).first()[0] or 0)
    return {a: out[a] for a in wanted}


def check_table(df, checks: Sequence[TableCheck]) -> Mapping[TableCheck, tuple[bool, Any]]:
    """Each check's verdict and observed value over `df`."""
    values = aggregate(df, [a for c in checks for a in c.aggregations])
    return {c: (c.holds(values), c.observed(values)) for c in checks}


def _plain(value: Any) -> Any:
    """A Decimal as a float: the definitions' aggregations are numbers."""
    from decimal import Decimal

    return float(value) if isinstance(value, Decimal) else value
