"""The batch job: plan (resolve the model, pin the snapshot, check and count what will be scored) -> score in Arrow
batches -> gate -> replace exactly the selected rows of the output in one commit -> set aside what was not scored.

This mode owns its source (a pinned Delta snapshot), its sink (a scoped replace of the output table) and its
transaction identity (``scoring:<run_id>``, version 0). Everything between comes from :mod:`scoring.engine`: the
unit of work (:func:`scoring.engine.unit.score_unit`) scores the selected rows end to end, and a runner
(:class:`scoring.runners.base.Runner`, Spark today) reads, scores and commits them.

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
import uuid
from typing import Any

from scoring import columns
from scoring.adapters import catalog, delta
from scoring.config import JobConfig
from scoring.core.identity import table_identity
from scoring.engine import checks, gates, rules_spark
from scoring.engine.clock import PhaseClock
from scoring.engine.faults import fault_point
from scoring.engine.model import PreparedModel, prepare_model
from scoring.engine.progress import LogReporter, Reporter
from scoring.engine.record import RunRecord
from scoring.engine.runtime import open_predictor
from scoring.engine.unit import UnitContext, score_unit
from scoring.errors import (
    ConfigError,
    InputError,
    InvalidRowsError,
    OutputError,
    ScoringError,
    UnwritableRowsError,
)
from scoring.runners.spark import SparkRunner, session_for

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
    """The pinned, filtered snapshot: pass-through and feature columns of the selected rows the output can take
    (those with invalid features among them are set aside by the unit of work)."""
    rejected: Any = dataclasses.field(repr=False, default=None)
    """Quarantine-table frame of the rows the output cannot take, or None."""
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
    if not config.run_id:
        return config, None
    meta = SparkRunner(spark).committed(config.output.table, txn_for(run_id))
    if meta is None:
        return config, None
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
    clock = timings if timings is not None else PhaseClock()
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = config.run_id or new_run_id(scored_at)
    spark = spark or session_for(config)
    runner = SparkRunner(spark)
    clock.lap("session")
    tables = catalog.resolve(config, spark)  # catalog names -> locations, once; paths stay as they are
    config = tables.config
    checks.check_paths(config, spark)
    config, pinned_model = _resume(config, spark, run_id, tables.given("input.table"))
    reporter.step(f"resolving {pinned_model or config.model.uri}")
    model = prepare_model(config, uri=pinned_model)
    reporter.step(f"model {model.name} version {model.version} ({', '.join(model.ref.flavors)})")
    clock.lap("resolve")

    source, input_version = runner.read_snapshot(config.input.table, config.input.version)
    reporter.step(f"input {config.input.table} at version {input_version}")
    checks.check_columns(config, source.schema, model.features)
    if config.input.where is not None:
        try:
            source = runner.filter(source, config.input.where)
        except ValueError as e:
            raise InputError(
                f"input.where: {config.input.where!r} is not a valid filter on {config.input.table}: {e}",
                hint="write a Spark SQL boolean expression over the input's columns, e.g. ds = '2026-11-24'",
            ) from None
    passthrough = tuple(dict.fromkeys([*config.input.key, *config.output.partition_by]))
    source = runner.project(source, list(dict.fromkeys([*passthrough, *model.features])))
    valid = gates.valid_features(source.schema, model.features)
    # which selected rows the output can take (a partition value that is a path, a key that fits its column's type)
    rule = gates.write_rule(spark, config.output.table, source.schema, config.output.partition_by, passthrough)
    fits = gates.unwritable_reason(rule).isNull() if rule.can_fail else None
    try:
        partitions, rows_read, rows_invalid, duplicate, rows_unwritable = _profile(runner, source, config, valid, fits)
    except ScoringError:
        raise
    except Exception as e:
        raise runner.translate(e) from None
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
    selected_keys = runner.project(source, passthrough)
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
            verdicts = [rules_spark.valid_feature(source.schema, f).alias(f"__valid_{i}") for i, f in enumerate(model.features)]
            first = source.where(~valid).limit(1).select("*", *verdicts).collect()[0]
            key = ", ".join(f"{k}={first[k]!r}" for k in config.input.key)
            bad = [f for i, f in enumerate(model.features) if not first[f"__valid_{i}"]]
            raise InvalidRowsError(
                f"input: {rows_invalid} selected row(s) have null, NaN, infinite or out-of-range (beyond float32) "
                f"features, first at {key}: {', '.join(bad)}",
                hint="clean the input, filter the rows out with input.where, or set input.on_invalid_rows: skip "
                "to score the rest and set these aside in the quarantine table",
            )
        reporter.step(f"setting aside {rows_invalid} row(s) with invalid features (input.on_invalid_rows: skip)")
    output = runner.read_latest(config.output.table)
    output_exists, output_rows = output is not None, None
    if output is not None:
        output_rows = runner.count(output)
        if dry_run:
            partitions = _rows_to_replace(runner, output, selected_keys, partitions, config, passthrough)
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


def _profile(
    runner: SparkRunner, source, config: JobConfig, valid, fits=None
) -> tuple[list[Partition], int, int, str | None, int]:
    """One pass over the selected rows: rows and invalid rows per output partition, the first key that appears
    twice in one partition (None when keys are unique), and the rows the output cannot take (where `fits`, a
    condition, does not hold; those are not counted as invalid)."""
    keys = [*config.input.key, *[c for c in config.output.partition_by if c not in config.input.key]]
    found, total, bad, duplicate, unwritable = runner.profile(source, keys, config.output.partition_by, valid, fits)
    partitions = [Partition(values, rows) for values, rows in found]
    partitions.sort(key=lambda p: tuple(str(v) for v in p.values.values()))
    return partitions, total, bad, duplicate, unwritable


def _rows_to_replace(
    runner: SparkRunner, output, selected_keys, partitions, config: JobConfig, passthrough
) -> list[Partition]:
    """For ``scoring plan``: per partition, the output rows whose (key, partition) the run selected."""
    counts = runner.rows_matching(output, selected_keys, passthrough, config.output.partition_by)
    return [dataclasses.replace(p, rows_in_output=counts.get(tuple(p.values.values()), 0)) for p in partitions]


# -- the run ------------------------------------------------------------------------------------------------------


def run(config: JobConfig, *, spark=None, reporter: Reporter | None = None) -> RunRecord:
    """Run a batch scoring job. Raises a :class:`~scoring.errors.ScoringError` (and commits nothing) on bad input."""
    reporter = reporter or LogReporter()
    clock = PhaseClock()
    spark = spark or session_for(config)
    try:
        the_plan = plan(config, spark=spark, reporter=reporter, timings=clock)
        for line in the_plan.describe():
            reporter.step(line)
        with open_predictor(the_plan.config, the_plan.model, reporter) as predictor_spec:
            from scoring.adapters.spark import ship_model_files

            predictor_spec = ship_model_files(spark, predictor_spec)  # on a cluster: once, through Spark
            clock.lap("runtime")
            record = _score_and_write(the_plan, SparkRunner(spark), predictor_spec, reporter)
            clock.lap("score_write")
    finally:
        reporter.close()
    return dataclasses.replace(record, elapsed_s=clock.elapsed_s, timings_s=dict(clock.laps))


def _score_and_write(plan: Plan, runner: SparkRunner, predictor_spec, reporter: Reporter) -> RunRecord:
    """Score the selected rows through the unit of work (gates and checks included); then replace the selected rows
    of the output in one commit, then append the set-aside rows to the quarantine table."""
    config, model = plan.config, plan.model
    unit = score_unit(
        plan.source,
        UnitContext(
            config=config,
            model=model,
            predictor_spec=predictor_spec,
            runner=runner,
            stamp=gates.Stamp(plan.run_id, plan.scored_at, plan.passthrough),
            lineage=model.lineage(run_id=plan.run_id, scored_at=plan.scored_at, input_version=plan.input_version),
            passthrough=plan.passthrough,
            rows=plan.rows_read - plan.rows_unwritable,
            rows_invalid=plan.rows_invalid,
            gate_source=f"{config.input.table}@{plan.input_version}",
            output_gate_source=f"run {plan.run_id}",
            set_aside=(plan.rejected,),
            reporter=reporter,
            rows_selected=plan.rows_read,
        ),
    )
    try:
        quarantined, scored = unit.set_aside, unit.scored
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
            rows_written=plan.rows_read - plan.rows_rejected - unit.rows_quarantined,
            rows_rejected=plan.rows_rejected,
            rows_quarantined=unit.rows_quarantined,
            prediction_columns=tuple(unit.output_schema.names),
            partitions=tuple(p.to_dict() for p in plan.partitions),
            quality=unit.quality,
            quarantine_table=plan.given("quality.quarantine_table") if quarantined is not None else None,
            input_uri=table_identity(config.input.table).uri,
            output_uri=table_identity(config.output.table).uri,
        )
        if scored is None:
            scored = _empty_output(runner, config.output.table)
        reporter.step(f"writing {config.output.table} (run {plan.run_id})")
        fault_point("before-output-commit")
        try:
            with runner.watch(reporter, "scoring"):
                result = runner.commit_replace(
                    scored,
                    None if quarantined is None else runner.project(quarantined, plan.passthrough),
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
            raise runner.translate(e) from None
        fault_point("after-output-commit")
        # From here on the output is committed: nothing below may report the run as failed for the user's reason.
        plan.tables.register_new(runner.spark, "output.table")  # a new output named in the catalog: added now
        if quarantined is not None:
            _write_quarantine(runner, quarantined, config, plan.run_id, result)
            plan.tables.register_new(runner.spark, "quality.quarantine_table")
        fault_point("after-quarantine-commit")
    finally:
        unit.release(runner)
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


def _write_quarantine(runner: SparkRunner, quarantined, config: JobConfig, run_id: str, result) -> None:
    """Append the set-aside rows once per run id; the output is already committed, so a failure here says how to
    finish the run instead of claiming nothing was committed."""
    try:
        runner.commit_quarantine(quarantined, config.quarantine_table, quarantine_txn_for(run_id))
    except Exception as e:
        found = e if isinstance(e, ScoringError) else runner.translate(e)
        raise OutputError(
            f"the output commit of run {run_id} landed (version {result.version} of {config.output.table}), but "
            f"writing its set-aside rows to {config.quarantine_table} failed: {found}",
            hint=f"run the job again with --set run_id={run_id}: it finds the committed output and writes only the "
            "missing quarantine rows",
        ) from None


def _empty_output(runner: SparkRunner, path: str):
    """No row was scored (every selected row was set aside): an empty frame shaped like the output, so the commit
    still removes the set-aside rows' old scores."""
    if runner.read_latest(path) is None:
        raise InputError(
            "every selected row was set aside (see the quarantine table), and the output table does not exist yet, "
            "so there is no schema to create it with",
            hint="fix the input rows or the gates; nothing was written",
        )
    return runner.empty_like(path)
