"""Checks a run makes before it reads a row: where it writes, and whether the input has the columns the job and
the model need. Each failure names the config key and how to fix it; nothing has been written when they fail."""

from __future__ import annotations

from scoring import columns
from scoring.adapters import delta
from scoring.config import JobConfig
from scoring.core.identity import same_table
from scoring.errors import ConfigError, InputError, OutputError

_NUMERIC = ("ByteType", "ShortType", "IntegerType", "LongType", "FloatType", "DoubleType", "DecimalType")


def check_paths(config: JobConfig, spark) -> None:
    """A run never writes into its input, and writes only where a Delta table is or can be."""
    if config.input.table is None:
        raise ConfigError(
            "input.table is missing: this job reads Kafka (stream.source: kafka), so only `scoring stream` runs it",
            hint="run it with scoring stream, or name an input Delta table in input.table for a batch run",
        )
    tables = {
        "input.table": config.input.table,
        "output.table": config.output.table,
        "quality.quarantine_table": config.quarantine_table,
    }
    for a, b in (
        ("input.table", "output.table"),
        ("input.table", "quality.quarantine_table"),
        ("output.table", "quality.quarantine_table"),
    ):
        if same_table(tables[a], tables[b]):
            raise ConfigError(
                f"{b} is the same table as {a} ({tables[b]}): a run must never write into its input or mix "
                "predictions and quarantined rows",
                hint=f"point {b} at its own table",
            )
    delta.check_target(spark, config.output.table, key="output.table")
    delta.check_target(spark, config.quarantine_table, key="quality.quarantine_table")


def check_columns(config: JobConfig, schema, features: tuple[str, ...]) -> None:
    present = {f.name: f for f in schema.fields}
    table = config.input.table
    for key_name, wanted in (
        ("input.key", config.input.key),
        ("input.features", features),
        ("output.partition_by", config.output.partition_by),
    ):
        missing = [c for c in wanted if c not in present]
        if missing:
            raise InputError(
                f"{key_name}: column(s) {missing} not in the input table {table} (it has {sorted(present)})",
                hint=f"fix {key_name} in the job config, or check that input.table points at the right table",
            )
    for name in features:
        kind = present[name].dataType
        if type(kind).__name__ == "ArrayType":  # an array column feeds one [rows, n] model input
            kind = kind.elementType
        if type(kind).__name__ not in _NUMERIC:
            raise InputError(
                f"input.features: column {name!r} of {table} is {present[name].dataType.simpleString()}, "
                "but models take numbers or arrays of numbers",
                hint=f"cast {name} to a numeric type (or an array of one) upstream, or drop it from input.features",
            )
    reserved = set(columns.LINEAGE) & set([*config.input.key, *config.output.partition_by])
    if reserved:
        raise InputError(
            f"input column(s) {sorted(reserved)} clash with the lineage columns scoring adds",
            hint="rename them upstream; the lineage column names are listed in the README",
        )


_STREAM_ONLY = frozenset({columns.SOURCE_VERSION_FROM, columns.SOURCE_TOPIC})
"""Columns only a stream writes (where its rows came from): they tell a stream's output from a batch run's."""


def _refuse_mixing_batch_and_stream(path: str, existing: set[str], planned: set[str]) -> None:
    """A batch run may not write into a stream's output, nor a stream into a batch run's: a batch run replaces rows
    by key (a stream's rows would be replaced or deleted under it) while a stream appends (a key the batch run wrote
    would then be there twice). Refused before anything is written, naming who owns the table."""
    theirs, ours = bool(existing & _STREAM_ONLY), bool(planned & _STREAM_ONLY)
    if theirs and not ours:
        raise OutputError(
            f"output.table: {path} is the output of a stream (it has the stream's source columns "
            f"{sorted(existing & _STREAM_ONLY)}): a batch run may not write into it, as its rows would replace, "
            "delete or duplicate the stream's",
            hint="write the batch run to another output.table (a stream's output takes only that stream's "
            "micro-batches)",
        )
    if ours and not theirs:
        raise OutputError(
            f"output.table: {path} is the output of batch runs (it has none of a stream's source columns): a stream "
            "may not append into it, as a key a batch run wrote would then be there twice",
            hint="point the stream at a new output.table",
        )


def check_output_schema(spark, path: str, schema, partition_by: list[str]) -> None:
    """Fail before scoring when the existing output table cannot take this run's (or micro-batch's) rows."""
    layout = delta.layout(spark, path)
    if layout is None:
        return
    current, schema_now = layout
    if current != list(partition_by):
        raise OutputError(
            f"output.partition_by: {path} is partitioned by {current}, the job says {list(partition_by)}",
            hint=f"set output.partition_by to {current}, or write to a new output.table",
        )
    existing = {f.name: f.dataType.simpleString() for f in schema_now.fields}
    planned = {f.name: f.dataType.simpleString() for f in schema.fields}
    if existing != planned:
        diff = sorted(set(existing.items()) ^ set(planned.items()))
        _refuse_mixing_batch_and_stream(path, set(existing), set(planned))
        raise OutputError(
            f"output.table: {path} has columns {existing}, this run writes {planned} (differences: {diff})",
            hint="write to a new output.table, or keep the model's outputs, keys and partition columns the same",
        )
