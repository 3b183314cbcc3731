"""The batch job: plan (resolve the model, pin the snapshot, check and count what will be scored) -> score in Arrow
batches -> gate -> replace exactly the selected rows of the output in one commit -> set aside what was not scored.

This mode owns its source (a pinned Delta snapshot), its sink (a scoped replace of the output table) and its
transaction identity (``scoring:<run_id>``, version 0). Everything between comes from :mod:`scoring.engine`.

What a run promises, and how:
- It replaces exactly the ``(key, partition)`` rows it selected: a MERGE on the key and partition columns updates
  the scored rows, inserts new ones and deletes the rows it set aside this time; every other row is left as it was.
- Every check that can fail for the user's reason runs before the output commit; a failed run commits nothing.
- The output commit and the quarantine append each carry a transaction id, and the quarantine is written only after
  the output committed: a retry with the same run id after a crash finishes the run (it finds the committed output,
  pins the same input and model versions, and writes only what is missing), so every set-aside row is in the
  quarantine table exactly once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from typing import Any

from scoring import columns
from scoring.adapters import catalog, delta
from scoring.config import JobConfig
from scoring.core.identity import table_identity
from scoring.core.score import ScoringSpec
from scoring.engine import checks, gates
from scoring.engine.faults import fault_point
from scoring.engine.model import PreparedModel, prepare_model
from scoring.engine.probe import PROBE_ROWS, probe
from scoring.engine.progress import LogReporter, Reporter, watch_spark
from scoring.engine.record import RunRecord
from scoring.engine.runtime import open_predictor
from scoring.errors import (
    ConfigError,
    InputError,
    InvalidRowsError,
    OutputError,
    ScoringError,
    UnwritableRowsError,
    from_spark_exception,
)

_LOGGER = logging.getLogger(__name__)

RunSummary = RunRecord
"""The record a batch run returns (kept under its earlier name)."""

_SHOWN_PARTITIONS = 20


def new_run_id(now: dt.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def txn_for(run_id: str) -> delta.Txn:
    """The output commit's transaction identity for a batch run."""
    return delta.Txn(f"scoring:{run_id}", 0)


def quarantine_txn_for(run_id: str) -> delta.Txn:
    return delta.Txn(f"scoring-quarantine:{run_id}", 0)


def _translate(e: Exception) -> Exception:
    found = from_spark_exception(e)
    if found is not None:
        return found
    text = str(e)
    if "FileNotFound" in text or "FILE_NOT_EXIST" in text or "does not exist" in text and "parquet" in text:
        return InputError(
            f"a data file of the input snapshot is gone: {delta.message_of(e)}",
            hint="the pinned input version was vacuumed (VACUUM removes files of old versions); read a later "
            "version, or leave input.version out to read the latest",
        )
    return e


# -- the plan -----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Partition:
    """One output partition the run selected rows in."""

    values: dict[str, Any]
    rows: int
    rows_in_output: int | None = None
    """Rows the output holds now for the selected keys of this partition (what the run replaces); ``scoring plan``
    only."""

    def to_dict(self) -> dict[str, Any]:
        out = {"values": self.values, "rows": self.rows}
        if self.rows_in_output is not None:
            out["rows_to_replace"] = self.rows_in_output
        return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the driver settled before any row is scored."""

    config: JobConfig
    model: PreparedModel
    run_id: str
    scored_at: dt.datetime
    input_version: int
    rows_read: int
    rows_rejected: int
    partitions: tuple[Partition, ...]
    output_exists: bool
    output_rows: int | None
    """Rows in the output table now (None when it does not exist yet)."""
    resumes: bool
    """The output already holds this run id's commit (an earlier attempt committed, then died): the run writes only
    what is missing."""
    source: Any = dataclasses.field(repr=False, default=None)
    """The pinned, filtered snapshot: pass-through and feature columns of the valid selected rows."""
    rejected: Any = dataclasses.field(repr=False, default=None)
    """Quarantine-table frame of the rows with invalid features (``on_invalid_rows: skip``), or None."""
    selected_keys: Any = dataclasses.field(repr=False, default=None)
    """Key and partition columns of every selected row (scored or set aside): what the run replaces."""
    tables: catalog.Resolved | None = dataclasses.field(repr=False, default=None)
    """The job's tables as the config named them and where they are (``config`` holds the locations)."""
    rows_unwritable: int = 0
    """Selected rows the output cannot take, set aside in the quarantine table (counted in ``rows_rejected``)."""

    def named(self, key: str) -> str | None:
        """A table as the config gave it: a catalog name is shown with its location."""
        table = self.tables.tables.get(key) if self.tables else None
        if table is None:
            return {"input.table": self.config.input.table, "output.table": self.config.output.table}.get(
                key, self.config.quarantine_table
            )
        return f"{table.given} (at {table.location})" if table.by_name else table.given

    def given(self, key: str) -> str | None:
        """A table exactly as the config gave it (a name or a path): what the run's record and commit carry."""
        given = self.tables.given(key) if self.tables else None
        return given or self.named(key)

    @property
    def passthrough(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.config.input.key, *self.config.output.partition_by]))

    def describe(self) -> list[str]:
        """The plan as lines for a person."""
        c = self.config
        lines = [
            f"model      {self.model.name} version {self.model.version} ({c.model.uri})",
            f"input      {self.named('input.table')} @ version {self.input_version}"
            + (f" where {c.input.where}" if c.input.where else ""),
            f"selected   {self.rows_read:,} rows"
            + (f", {self.rows_invalid:,} with invalid features (set aside)" if self.rows_invalid else "")
            + (f", {self.rows_unwritable:,} the output cannot take (set aside)" if self.rows_unwritable else ""),
            f"output     {self.named('output.table')}"
            + (f" ({self.output_rows:,} rows now)" if self.output_exists else " (new table, created by this run)"),
        ]
        if self.resumes:
            lines.append(f"resumes    run {self.run_id} already committed its output: only missing writes are done")
        if c.output.partition_by:
            for p in self.partitions[:_SHOWN_PARTITIONS]:
                where = ", ".join(f"{k}={v}" for k, v in p.values.items())
                replaced = "" if p.rows_in_output is None else f", replaces {p.rows_in_output:,} output rows"
                lines.append(f"partition  {where}: {p.rows:,} rows selected{replaced}")
            if len(self.partitions) > _SHOWN_PARTITIONS:
                lines.append(f"partition  ... and {len(self.partitions) - _SHOWN_PARTITIONS} more")
        else:
            replaced = self.partitions[0].rows_in_output if self.partitions else None
            if replaced is not None:
                lines.append(f"replaces   {replaced:,} output rows (the selected keys); every other row is kept")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The plan, JSON-ready (``scoring plan --json``)."""
        return {
            "run_id": self.run_id,
            "model_uri": self.model.uri,
            "input_table": self.given("input.table"),
            "input_version": self.input_version,
            "input_where": self.config.input.where,
            "output_table": self.given("output.table"),
            "output_rows": self.output_rows,
            "rows_selected": self.rows_read,
            "rows_invalid": self.rows_invalid,
            "rows_unwritable": self.rows_unwritable,
            "rows_to_replace": self.rows_to_replace,
            "resumes": self.resumes,
            "partitions": [p.to_dict() for p in self.partitions],
        }

    @property
    def rows_invalid(self) -> int:
        return self.rows_rejected - self.rows_unwritable

    @property
    def rows_to_replace(self) -> int | None:
        counts = [p.rows_in_output for p in self.partitions]
        return None if any(n is None for n in counts) else sum(counts)  # type: ignore[arg-type]


def _resume(config: JobConfig, spark, run_id: str, input_table: str) -> tuple[JobConfig, str | None]:
    """When the output already holds this run id's commit, the config pinned to what that attempt read (its input
    version) and the exact model version it scored with; otherwise the config as it is. `input_table` is the input
    as the config gave it (a catalog name or a path: what the commit recorded)."""
    if not config.run_id or delta.latest_version(spark, config.output.table) is None:
        return config, None
    txn = txn_for(run_id)
    if delta.committed_version(spark, config.output.table, txn) is None:
        return config, None
    commit = delta.find_commit(spark, config.output.table, txn)
    meta = commit.metadata if commit else {}
    if (meta.get("input_where") or None) != (config.input.where or None) or meta.get(
        "input_table", input_table
    ) != input_table:
        raise ConfigError(
            f"run_id {run_id!r} already committed to {config.output.table} with a different selection "
            f"(input.table {meta.get('input_table')!r}, input.where {meta.get('input_where')!r})",
            hint="a run id names one logical run; give this run a new run_id (or leave run_id out)",
        )
    version = meta.get(columns.INPUT_VERSION)
    pinned = config.model_copy(update={"input": config.input.model_copy(update={"version": version})})
    return pinned, meta.get(columns.MODEL_URI)


def plan(
    config: JobConfig, *, spark=None, reporter: Reporter | None = None, dry_run: bool = False, timings=None
) -> Plan:
    """Resolve the model, pin the snapshot, check the job against the tables and count what would be scored.
    Writes nothing. With `dry_run`, also counts the output rows the run would replace (a join with the output)."""
    reporter = reporter or LogReporter()
    clock = timings if timings is not None else _Clock()
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = config.run_id or new_run_id(scored_at)
    spark = spark or _session(config)
    clock.lap("session")
    tables = catalog.resolve(config, spark)  # catalog names -> locations, once; paths stay as they are
    config = tables.config
    checks.check_paths(config, spark)
    config, pinned_model = _resume(config, spark, run_id, tables.given("input.table"))
    reporter.step(f"resolving {pinned_model or config.model.uri}")
    model = prepare_model(config, uri=pinned_model)
    reporter.step(f"model {model.name} version {model.version} ({', '.join(model.ref.flavors)})")
    clock.lap("resolve")

    from pyspark.errors import AnalysisException, ParseException

    source, input_version = delta.read_snapshot(spark, config.input.table, config.input.version)
    reporter.step(f"input {config.input.table} at version {input_version}")
    checks.check_columns(config, source.schema, model.features)
    if config.input.where is not None:
        try:
            source = source.where(config.input.where)
            source.schema  # noqa: B018 - analyses the filter now
        except (AnalysisException, ParseException) as e:
            raise InputError(
                f"input.where: {config.input.where!r} is not a valid filter on {config.input.table}: "
                f"{delta.message_of(e)}",
                hint="write a Spark SQL boolean expression over the input's columns, e.g. ds = '2026-11-24'",
            ) from None
    passthrough = tuple(dict.fromkeys([*config.input.key, *config.output.partition_by]))
    source = source.select(*[f"`{c}`" for c in dict.fromkeys([*passthrough, *model.features])])
    valid = gates.valid_features(source.schema, model.features)
    # which selected rows the output can take (a partition value that is a path, a key that fits its column's type)
    rule = gates.write_rule(spark, config.output.table, source.schema, config.output.partition_by, passthrough)
    fits = gates.unwritable_reason(rule).isNull() if rule.can_fail else None
    try:
        partitions, rows_read, rows_invalid, duplicate, rows_unwritable = _profile(source, config, valid, fits)
    except ScoringError:
        raise
    except Exception as e:
        raise _translate(e) from None
    if duplicate is not None:
        raise InputError(
            f"input: key {duplicate} appears more than once in one partition of the selected rows of "
            f"{config.input.table}@{input_version}; the output holds one row per (key, partition)",
            hint="deduplicate the input, add the distinguishing column to input.key, or narrow input.where",
        )
    if rows_read == 0:
        raise InputError(
            f"input: nothing to score in {config.input.table} at version {input_version}"
            + (f" where {config.input.where}" if config.input.where else ""),
            hint="check input.where (e.g. the partition date) and input.version; the output table was not touched",
        )
    selected_keys = source.select(*[f"`{c}`" for c in passthrough])
    rejected = None
    stamp = gates.Stamp(run_id, scored_at, passthrough)
    if rows_unwritable:
        if config.quality.quarantine_table is None:
            why = gates.unwritable_reason(rule)
            first = source.where(why.isNotNull()).select(*config.input.key, why.alias("_why")).limit(1).collect()[0]
            key = ", ".join(f"{k}={first[k]!r}" for k in config.input.key)
            raise UnwritableRowsError(
                f"input: {rows_unwritable} selected row(s) of {config.input.table}@{input_version} cannot be written "
                f"to {config.output.table}, first at {key}: {first['_why']}",
                hint="fix these rows upstream or leave them out with input.where; or name a quarantine table in "
                "quality.quarantine_table to set them aside there and write the rest",
            )
        reporter.step(f"setting aside {rows_unwritable} row(s) the output cannot take (quality.quarantine_table)")
        cut = gates.split_unwritable(source, rule, stamp, count=False)
        source, rejected = cut.kept, cut.set_aside
    else:
        source = gates.conform(source, rule)
    if rows_invalid:
        if config.input.on_invalid_rows == "fail":
            first = source.where(~valid).limit(1).collect()[0]
            key = ", ".join(f"{k}={first[k]!r}" for k in config.input.key)
            bad = [f for f in model.features if not _ok(first[f])]
            raise InvalidRowsError(
                f"input: {rows_invalid} selected row(s) have null, NaN, infinite or out-of-range (beyond float32) "
                f"features, first at {key}: {', '.join(bad)}",
                hint="clean the input, filter the rows out with input.where, or set input.on_invalid_rows: skip "
                "to score the rest and set these aside in the quarantine table",
            )
        reporter.step(f"setting aside {rows_invalid} row(s) with invalid features (input.on_invalid_rows: skip)")
        reason = "invalid feature (null, NaN, infinite or beyond float32)"
        cut = gates.split(source, valid, reason, "input", stamp, count=False)
        source, rejected = cut.kept, gates.union([rejected, cut.set_aside])
    output_exists = delta.latest_version(spark, config.output.table) is not None
    output_rows = None
    if output_exists:
        output = spark.read.format("delta").load(config.output.table)
        output_rows = output.count()
        if dry_run:
            partitions = _rows_to_replace(output, selected_keys, partitions, config, passthrough)
    clock.lap("plan")
    return Plan(
        config=config,
        model=model,
        run_id=run_id,
        scored_at=scored_at,
        input_version=input_version,
        rows_read=rows_read,
        rows_rejected=rows_invalid + rows_unwritable,
        partitions=tuple(partitions),
        output_exists=output_exists,
        output_rows=output_rows,
        resumes=pinned_model is not None,
        source=source,
        rejected=rejected,
        selected_keys=selected_keys,
        tables=tables,
        rows_unwritable=rows_unwritable,
    )


def _ok(value: Any) -> bool:
    from scoring.core.batching import FEATURE_LIMIT

    if value is None:
        return False
    if isinstance(value, list | tuple):  # an array feature: every element must be valid
        return all(_ok(v) for v in value)
    try:
        return abs(float(value)) <= FEATURE_LIMIT
    except (TypeError, ValueError):
        return False


def _profile(source, config: JobConfig, valid, fits=None) -> tuple[list[Partition], int, int, str | None, int]:
    """One pass over the selected rows: rows and invalid rows per output partition, the first key that appears
    twice in one partition (None when keys are unique), and the rows the output cannot take (where `fits`, a
    condition, does not hold; those are not counted as invalid)."""
    from pyspark.sql import functions as F

    fits = F.lit(True) if fits is None else fits
    keys = [*config.input.key, *[c for c in config.output.partition_by if c not in config.input.key]]
    per_key = source.groupBy(*[F.col(f"`{c}`") for c in keys]).agg(
        F.count(F.lit(1)).alias("_n"),
        F.sum(F.when(fits & ~valid, 1).otherwise(0)).alias("_bad"),
        F.sum(F.when(~fits, 1).otherwise(0)).alias("_unwritable"),
    )
    dupes = per_key.where(F.col("_n") > 1).limit(1)
    parts = config.output.partition_by
    agg = per_key.groupBy(*[F.col(f"`{c}`") for c in parts]).agg(
        F.sum("_n").alias("_rows"),
        F.sum("_bad").alias("_bad"),
        F.max("_n").alias("_max"),
        F.sum("_unwritable").alias("_unwritable"),
    )
    rows = agg.collect()
    partitions = [Partition({c: r[c] for c in parts}, int(r["_rows"])) for r in rows if r["_rows"]]
    partitions.sort(key=lambda p: tuple(str(v) for v in p.values.values()))
    total = sum(int(r["_rows"] or 0) for r in rows)
    bad = sum(int(r["_bad"] or 0) for r in rows)
    unwritable = sum(int(r["_unwritable"] or 0) for r in rows)
    duplicate = None
    if any((r["_max"] or 0) > 1 for r in rows):
        first = dupes.collect()[0]
        duplicate = ", ".join(f"{c}={first[c]!r}" for c in keys)
    return partitions, total, bad, duplicate, unwritable


def _rows_to_replace(output, selected_keys, partitions, config: JobConfig, passthrough) -> list[Partition]:
    """For ``scoring plan``: per partition, the output rows whose (key, partition) the run selected."""
    from pyspark.sql import functions as F

    cond = [output[f"`{c}`"].eqNullSafe(selected_keys[f"`{c}`"]) for c in passthrough]
    hit = output.join(selected_keys, on=cond, how="left_semi")
    parts = config.output.partition_by
    grouped = hit.groupBy(*[F.col(f"`{c}`") for c in parts]).agg(F.count(F.lit(1)).alias("_n"))
    counts = {tuple(r[c] for c in parts): int(r["_n"]) for r in grouped.collect()}
    return [dataclasses.replace(p, rows_in_output=counts.get(tuple(p.values.values()), 0)) for p in partitions]


# -- the run ------------------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.started = self._mark = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(self.laps.get(phase, 0.0) + now - self._mark, 3)
        self._mark = now

    @property
    def elapsed_s(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def _session(config: JobConfig):
    from scoring.adapters import spark as spark_glue

    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(config.runtime.batch_rows), **config.spark.conf}
    spark = spark_glue.get_session(config.spark.master, conf, app_name=f"scoring:{config.name}")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.runtime.batch_rows))
    return spark


def run(config: JobConfig, *, spark=None, reporter: Reporter | None = None) -> RunRecord:
    """Run a batch scoring job. Raises a :class:`~scoring.errors.ScoringError` (and commits nothing) on bad input."""
    reporter = reporter or LogReporter()
    clock = _Clock()
    spark = spark or _session(config)
    try:
        the_plan = plan(config, spark=spark, reporter=reporter, timings=clock)
        for line in the_plan.describe():
            reporter.step(line)
        with open_predictor(the_plan.config, the_plan.model, reporter) as predictor_spec:
            from scoring.adapters.spark import ship_model_files

            predictor_spec = ship_model_files(spark, predictor_spec)  # on a cluster: once, through Spark
            clock.lap("runtime")
            record = _score_and_write(the_plan, spark, predictor_spec, reporter)
            clock.lap("score_write")
    finally:
        reporter.close()
    return dataclasses.replace(record, elapsed_s=clock.elapsed_s, timings_s=dict(clock.laps))


def _score_and_write(plan: Plan, spark, predictor_spec, reporter: Reporter) -> RunRecord:
    """Probe, score, gate and check everything; then replace the selected rows of the output in one commit, then
    append the set-aside rows to the quarantine table."""
    from scoring.adapters import spark as spark_glue

    config, model = plan.config, plan.model
    stamp = gates.Stamp(plan.run_id, plan.scored_at, plan.passthrough)
    set_aside = [plan.rejected]
    rows_quarantined = 0
    reports: dict[str, Any] = {}
    source = plan.source
    gate = config.quality.input
    if gate.expectations:
        reporter.step(f"input gate: {len(gate.expectations)} expectation(s)")
        cut = gates.apply_gate(source, gate, "input", stamp, source=f"{config.input.table}@{plan.input_version}")
        source, rows_quarantined = cut.kept, rows_quarantined + cut.count
        set_aside.append(cut.set_aside)
        reports["input"] = cut.report.to_dict()
        if cut.count:
            reporter.step(f"input gate set aside {cut.count} row(s) failing expectations")

    spec = ScoringSpec(
        features=model.features,
        passthrough=plan.passthrough,
        key=tuple(config.input.key),
        model=model.uri,
        allow_nonfinite=config.output.on_invalid_predictions == "quarantine",
    )
    try:
        output_schema = probe(source.limit(PROBE_ROWS).toArrow(), spec, predictor_spec)
    except ScoringError:
        raise
    except Exception as e:
        raise _translate(e) from None
    lineage = model.lineage(run_id=plan.run_id, scored_at=plan.scored_at, input_version=plan.input_version)
    everything_set_aside = len(output_schema) == 0
    spec = dataclasses.replace(spec, output_schema=output_schema)
    scored = None if everything_set_aside else spark_glue.score_dataframe(source, spec, predictor_spec, lineage)
    if scored is not None:
        checks.check_output_schema(spark, config.output.table, scored.schema, config.output.partition_by)
    cached = None
    try:
        needs_second_look = config.quality.output.expectations or config.output.on_invalid_predictions == "quarantine"
        if scored is not None and needs_second_look:
            # The checks need the scores before the commit: score once, keep them, check them, then write them.
            cached = scored = scored.persist()
            reporter.step(f"scoring {plan.rows_read:,} rows, then checking the predictions")
            with watch_spark(spark, reporter, "scoring"):
                if config.output.on_invalid_predictions == "quarantine":
                    cut = gates.split(
                        scored,
                        gates.finite_predictions([scored.schema[n] for n in output_schema.names]),
                        "NaN or infinite prediction",
                        "output",
                        stamp,
                    )
                    scored, rows_quarantined = cut.kept, rows_quarantined + cut.count
                    set_aside.append(cut.set_aside)
                if config.quality.output.expectations:
                    cut = gates.apply_gate(scored, config.quality.output, "output", stamp, source=f"run {plan.run_id}")
                    scored, rows_quarantined = cut.kept, rows_quarantined + cut.count
                    set_aside.append(cut.set_aside)
                    reports["output"] = cut.report.to_dict()
        quarantined = gates.union(set_aside)
        rows_rejected = plan.rows_rejected
        record = RunRecord(
            job=config.name,
            run_id=plan.run_id,
            model_name=model.name,
            model_version=model.version,
            model_uri=model.uri,
            requested_model_uri=config.model.uri,
            input_table=plan.given("input.table"),
            input_version=plan.input_version,
            output_table=plan.given("output.table"),
            scored_at=plan.scored_at.isoformat(),
            backend=config.runtime.backend,
            input_where=config.input.where,
            rows_read=plan.rows_read,
            rows_written=plan.rows_read - rows_rejected - rows_quarantined,
            rows_rejected=rows_rejected,
            rows_quarantined=rows_quarantined,
            prediction_columns=tuple(output_schema.names),
            partitions=tuple(p.to_dict() for p in plan.partitions),
            quality=reports,
            quarantine_table=plan.given("quality.quarantine_table") if quarantined is not None else None,
            input_uri=table_identity(config.input.table).uri,
            output_uri=table_identity(config.output.table).uri,
        )
        if scored is None:
            scored = _empty_output(spark, config.output.table, source, plan.passthrough)
        reporter.step(f"writing {config.output.table} (run {plan.run_id})")
        fault_point("before-output-commit")
        try:
            with watch_spark(spark, reporter, "scoring"):
                result = delta.write_scoped(
                    scored,
                    None if quarantined is None else quarantined.select(*[f"`{c}`" for c in plan.passthrough]),
                    config.output.table,
                    key=config.input.key,
                    partition_by=config.output.partition_by,
                    partitions=[tuple(p.values.values()) for p in plan.partitions],
                    selected=plan.selected_keys,
                    txn=txn_for(plan.run_id),
                    metadata=record.to_commit_metadata(),
                )
        except ScoringError:
            raise
        except Exception as e:
            raise _translate(e) from None
        fault_point("after-output-commit")
        # From here on the output is committed: nothing below may report the run as failed for the user's reason.
        plan.tables.register_new(spark, "output.table")  # a new output named in the catalog: added now
        if quarantined is not None:
            _write_quarantine(quarantined, config, plan.run_id, result)
            plan.tables.register_new(spark, "quality.quarantine_table")
        fault_point("after-quarantine-commit")
    finally:
        if cached is not None:
            cached.unpersist()
    warnings = []
    if result.committed and result.rows_written != record.rows_written:
        warnings.append(
            f"the output commit (version {result.version}) wrote {result.rows_written} rows, the run expected "
            f"{record.rows_written}: please report this with the job config"
        )
        _LOGGER.error("%s", warnings[-1])
    return dataclasses.replace(
        record,
        output_version_before=result.version_before,
        output_version=result.version,
        rows_written=result.rows_written,
        rows_replaced=result.rows_replaced,
        rows_kept=result.rows_kept,
        committed=result.committed,
        completed_earlier_attempt=plan.resumes,
        warnings=tuple(warnings),
    )


def _write_quarantine(quarantined, config: JobConfig, run_id: str, result: delta.WriteResult) -> None:
    """Append the set-aside rows once per run id; the output is already committed, so a failure here says how to
    finish the run instead of claiming nothing was committed."""
    try:
        delta.append_once(quarantined, config.quarantine_table, txn=quarantine_txn_for(run_id))
    except Exception as e:
        found = e if isinstance(e, ScoringError) else _translate(e)
        raise OutputError(
            f"the output commit of run {run_id} landed (version {result.version} of {config.output.table}), but "
            f"writing its set-aside rows to {config.quarantine_table} failed: {found}",
            hint=f"run the job again with --set run_id={run_id}: it finds the committed output and writes only the "
            "missing quarantine rows",
        ) from None


def _empty_output(spark, path: str, source, passthrough):
    """No row was scored (every selected row was set aside): an empty frame shaped like the output, so the commit
    still removes the set-aside rows' old scores."""
    if delta.latest_version(spark, path) is None:
        raise InputError(
            "every selected row was set aside (see the quarantine table), and the output table does not exist yet, "
            "so there is no schema to create it with",
            hint="fix the input rows or the gates; nothing was written",
        )
    return spark.read.format("delta").load(path).limit(0)
