"""The batch job: config -> resolve model -> read snapshot -> validate -> score in Arrow batches -> stamp -> write -> summary."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import tempfile
import time
import uuid
from typing import Any

from scoring import columns, quality
from scoring.adapters import delta, registry
from scoring.adapters.embedded import EmbeddedSpec
from scoring.config import JobConfig
from scoring.core.score import ScoringSpec
from scoring.core.stamp import Lineage
from scoring.errors import InputError, ModelError, OutputError, ScoringError, from_spark_exception
from scoring.progress import LogReporter, Reporter, watch_spark

_LOGGER = logging.getLogger(__name__)

PROBE_ROWS = 16
"""Rows scored on the driver before the job starts, to fail fast and to learn the model's output columns."""


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a run did. ``rows_read == rows_written + rows_rejected + rows_quarantined`` for every committed run."""

    job: str
    run_id: str
    model_name: str
    model_version: str
    model_uri: str
    requested_model_uri: str
    input_table: str
    input_version: int
    output_table: str
    output_version_before: int | None
    output_version: int | None
    rows_read: int
    rows_written: int
    rows_rejected: int
    rows_quarantined: int
    committed: bool
    elapsed_s: float
    backend: str
    prediction_columns: tuple[str, ...]
    timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per phase: resolve (model), plan (snapshot, checks, count, input gate), runtime (sidecar start-up),
    score_write (probe, scoring, output gate, the commit)."""
    quality: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Gate reports by gate (``input``, ``output``): success, per-expectation statistics, rows quarantined."""
    quarantine_table: str | None = None
    """Where rejected and quarantined rows went (None when there were none)."""

    @property
    def rows_per_s(self) -> float:
        """Scoring throughput: rows read per second of the scoring job (read, score, write)."""
        seconds = self.timings_s.get("score_write", self.elapsed_s)
        return self.rows_read / seconds if seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["prediction_columns"] = list(self.prediction_columns)
        return out


def new_run_id(now: dt.datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


_NUMERIC = ("ByteType", "ShortType", "IntegerType", "LongType", "FloatType", "DoubleType", "BooleanType", "DecimalType")


def _resolve_features(config: JobConfig, model: registry.ModelRef, input_columns: list[str]) -> tuple[str, ...]:
    signature = registry.signature_inputs(model)
    if config.input.features is not None:
        features = tuple(config.input.features)
        if signature is not None:
            expected = [name for name, _ in signature]
            if sorted(expected) != sorted(features):
                raise ModelError(
                    f"model {model.uri} expects features {expected} (its MLflow signature), "
                    f"but input.features is {list(features)}",
                    hint="make input.features match the model's signature, or leave input.features out to use it",
                )
        return features
    if signature is None:
        raise ModelError(
            f"model {model.uri} has no named inputs in its MLflow signature, so the features are unknown",
            hint="list the feature columns in input.features, in the order the model was trained on",
        )
    return tuple(name for name, _ in signature)


def _check_columns(config: JobConfig, schema, features: tuple[str, ...]) -> None:
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
        kind = type(present[name].dataType).__name__
        if kind not in _NUMERIC:
            raise InputError(
                f"input.features: column {name!r} of {table} is {present[name].dataType.simpleString()}, "
                "but models take numbers",
                hint=f"cast {name} to a numeric type upstream, or drop it from input.features",
            )
    reserved = set(columns.LINEAGE) & set([*config.input.key, *config.output.partition_by])
    if reserved:
        raise InputError(
            f"input column(s) {sorted(reserved)} clash with the lineage columns scoring adds",
            hint="rename them upstream; the lineage column names are listed in the README",
        )


def _translate(e: Exception) -> Exception:
    found = from_spark_exception(e)
    return found if found is not None else e


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the driver settled before any row is scored."""

    config: JobConfig
    model: registry.ModelRef
    features: tuple[str, ...]
    passthrough: tuple[str, ...]
    selected: Any
    """The DataFrame to score: pass-through and feature columns of the pinned, filtered snapshot."""
    input_version: int
    rows_read: int
    rows_rejected: int
    rows_quarantined: int
    set_aside: tuple[Any, ...]
    """Quarantine-table frames of the input rows not scored (null/NaN features, failed input expectations)."""
    input_report: Any
    run_id: str
    scored_at: dt.datetime


class _Clock:
    def __init__(self) -> None:
        self.started = self._mark = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(now - self._mark, 3)
        self._mark = now

    @property
    def elapsed_s(self) -> float:
        return round(time.perf_counter() - self.started, 3)


def run(config: JobConfig, *, spark=None, reporter: Reporter | None = None) -> RunSummary:
    """Run a batch scoring job. Raises a :class:`~scoring.errors.ScoringError` (and commits nothing) on bad input."""
    from scoring.adapters import spark as spark_glue

    reporter = reporter or LogReporter()
    clock = _Clock()
    scored_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = config.run_id or new_run_id(scored_at)

    reporter.step(f"resolving {config.model.uri}")
    model = registry.resolve_model(config.model.uri, config.model.tracking_uri, config.model.registry_uri)
    reporter.step(f"model {model.name} version {model.version} ({', '.join(model.flavors)})")
    clock.lap("resolve")

    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(config.runtime.batch_rows), **config.spark.conf}
    spark = spark or spark_glue.get_session(config.spark.master, conf, app_name=f"scoring:{config.name}")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.runtime.batch_rows))
    clock.lap("session")

    plan = _plan(config, spark, model, run_id, scored_at, reporter)
    clock.lap("plan")
    try:
        with _runtime(config, model, plan.features, reporter) as predictor_spec:
            clock.lap("runtime")
            written = _score_and_write(plan, spark, predictor_spec, reporter)
            clock.lap("score_write")
    finally:
        reporter.close()
    result = written.result
    rows_written = result.rows_written if result.committed else 0
    rows_quarantined = plan.rows_quarantined + written.rows_quarantined
    if result.committed and rows_written + plan.rows_rejected + rows_quarantined != plan.rows_read:
        raise OutputError(
            f"run {run_id} read {plan.rows_read} rows but wrote {rows_written}, rejected {plan.rows_rejected} "
            f"and quarantined {rows_quarantined}",
            hint="this is a bug in scoring: please report it with the job config; "
            f"the output commit is version {result.version} of {config.output.table}",
        )
    return RunSummary(
        job=config.name,
        run_id=run_id,
        model_name=model.name,
        model_version=model.version,
        model_uri=model.uri,
        requested_model_uri=model.requested_uri,
        input_table=config.input.table,
        input_version=plan.input_version,
        output_table=config.output.table,
        output_version_before=result.version_before,
        output_version=result.version,
        rows_read=plan.rows_read,
        rows_written=rows_written,
        rows_rejected=plan.rows_rejected,
        rows_quarantined=rows_quarantined,
        committed=result.committed,
        elapsed_s=clock.elapsed_s,
        backend=config.runtime.backend,
        prediction_columns=written.prediction_columns,
        timings_s=clock.laps,
        quality={r.which: r.to_dict() for r in (plan.input_report, written.output_report) if r is not None},
        quarantine_table=written.quarantine_table,
    )


def _plan(config: JobConfig, spark, model: registry.ModelRef, run_id: str, scored_at: dt.datetime, reporter) -> _Plan:
    """Pin the snapshot, check the columns against the job and the model, count what will be scored."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    source, input_version = delta.read_snapshot(spark, config.input.table, config.input.version)
    reporter.step(f"input {config.input.table} at version {input_version}")
    features = _resolve_features(config, model, source.columns)
    _check_columns(config, source.schema, features)
    if config.input.where:
        try:
            source = source.where(config.input.where)
        except AnalysisException as e:
            raise InputError(
                f"input.where: {config.input.where!r} is not a valid filter on {config.input.table}: {e.getMessage()}",
                hint="write a Spark SQL boolean expression over the input's columns, e.g. ds = '2026-11-24'",
            ) from None

    passthrough = tuple(dict.fromkeys([*config.input.key, *config.output.partition_by]))
    rows_read = source.count()
    if rows_read == 0:
        raise InputError(
            f"input: nothing to score in {config.input.table} at version {input_version}"
            + (f" where {config.input.where}" if config.input.where else ""),
            hint="check input.where (e.g. the partition date) and input.version; the output table was not touched",
        )
    set_aside = []
    rows_rejected = 0
    if config.input.on_invalid_rows == "skip":
        valid = None
        for name in features:
            ok = F.col(name).isNotNull()
            if type(source.schema[name].dataType).__name__ in ("FloatType", "DoubleType"):
                ok = ok & ~F.isnan(F.col(name))
            valid = ok if valid is None else (valid & ok)
        rows_rejected = source.where(~valid).count()
        if rows_rejected == rows_read:
            raise InputError(
                f"input: all {rows_read} selected rows have null or NaN features",
                hint="clean the input; nothing was written",
            )
        if rows_rejected:
            reporter.step(f"skipping {rows_rejected} row(s) with null or NaN features (input.on_invalid_rows: skip)")
            set_aside.append(
                quality.quarantine_frame(
                    source.where(~valid), F.lit("null or NaN feature"), "input", config.input.key, run_id, scored_at
                )
            )
        source = source.where(valid)
    input_report = None
    rows_quarantined = 0
    gate = config.quality.input
    if gate.expectations:
        reporter.step(f"input gate: {len(gate.expectations)} expectation(s)")
        input_report = quality.evaluate(source, gate, "input", source=f"{config.input.table}@{input_version}")
        if input_report.quarantined:
            bad = quality.bad_row_condition(gate.expectations)
            rows_quarantined = input_report.quarantined
            reporter.step(f"quarantining {rows_quarantined} input row(s) that fail expectations")
            set_aside.append(
                quality.quarantine_frame(
                    source.where(bad),
                    quality.reason_column(gate.expectations),
                    "input",
                    config.input.key,
                    run_id,
                    scored_at,
                )
            )
            source = source.where(~bad)
    selected = source.select(*dict.fromkeys([*passthrough, *features]))
    return _Plan(
        config,
        model,
        features,
        passthrough,
        selected,
        input_version,
        rows_read,
        rows_rejected,
        rows_quarantined,
        tuple(set_aside),
        input_report,
        run_id,
        scored_at,
    )


@dataclasses.dataclass(frozen=True)
class _Written:
    result: delta.WriteResult
    prediction_columns: tuple[str, ...]
    rows_quarantined: int
    """Scored rows set aside by the output gate."""
    output_report: Any
    quarantine_table: str | None


def _score_and_write(plan: _Plan, spark, predictor_spec, reporter: Reporter) -> _Written:
    """Probe the model on a few rows, score everything, run the output gate, write it in one commit, then set
    aside the quarantined rows."""
    from scoring.adapters import spark as spark_glue

    config, model = plan.config, plan.model
    spec = ScoringSpec(
        features=plan.features, passthrough=plan.passthrough, key=tuple(config.input.key), model=model.uri
    )
    try:
        output_schema = spark_glue.probe_outputs(plan.selected.limit(PROBE_ROWS).toArrow(), spec, predictor_spec)
    except Exception as e:
        raise _translate(e) from None
    spec = dataclasses.replace(spec, output_schema=output_schema)
    clash = set(output_schema.names) & {*plan.passthrough, *columns.LINEAGE}
    if clash:
        raise ModelError(
            f"model {model.uri} outputs {sorted(clash)}, which clash with key, partition or lineage columns",
            hint="rename the model's outputs or the input columns",
        )
    lineage = Lineage(
        model_name=model.name,
        model_version=model.version,
        model_uri=model.uri,
        input_version=plan.input_version,
        scoring_run_id=plan.run_id,
        scored_at=plan.scored_at,
    )
    scored = spark_glue.score_dataframe(plan.selected, spec, predictor_spec, lineage)
    _check_output_schema(spark, config.output.table, scored.schema, config.output.partition_by)
    set_aside = list(plan.set_aside)
    gate = config.quality.output
    output_report, rows_quarantined, cached = None, 0, None
    try:
        if gate.expectations:
            # The gate needs the scores before the commit: score once, keep them, check them, then write them.
            cached = scored = scored.persist()
            reporter.step(
                f"scoring {plan.rows_read} rows, then the output gate ({len(gate.expectations)} expectations)"
            )
            try:
                output_report = quality.evaluate(scored, gate, "output", source=f"run {plan.run_id}")
            except ScoringError:
                raise
            except Exception as e:
                raise _translate(e) from None
            if output_report.quarantined:
                bad = quality.bad_row_condition(gate.expectations)
                rows_quarantined = output_report.quarantined
                set_aside.append(
                    quality.quarantine_frame(
                        scored.where(bad),
                        quality.reason_column(gate.expectations),
                        "output",
                        config.input.key,
                        plan.run_id,
                        plan.scored_at,
                    )
                )
                scored = scored.where(~bad)
        metadata = {
            **lineage.as_json_dict(),
            "job": config.name,
            "backend": config.runtime.backend,
            "requested_model_uri": model.requested_uri,
            "input_table": config.input.table,
            "input_where": config.input.where,
            "rows_read": plan.rows_read,
            "rows_rejected": plan.rows_rejected,
            "rows_quarantined": plan.rows_quarantined + rows_quarantined,
            "quality": {
                r.which: {"success": r.success, "quarantined": r.quarantined}
                for r in (plan.input_report, output_report)
                if r is not None
            },
        }
        reporter.step(f"writing {config.output.table} (run {plan.run_id})")
        try:
            with watch_spark(spark, reporter, "scoring"):
                result = delta.write_predictions(
                    scored,
                    config.output.table,
                    partition_by=config.output.partition_by,
                    run_id=plan.run_id,
                    metadata=metadata,
                )
                if set_aside and result.committed:
                    quarantined = set_aside[0]
                    for frame in set_aside[1:]:
                        quarantined = quarantined.unionByName(frame, allowMissingColumns=True)
                    delta.append_once(quarantined, config.quarantine_table, app_id=f"scoring-quarantine:{plan.run_id}")
        except ScoringError:
            raise
        except Exception as e:
            raise _translate(e) from None
    finally:
        if cached is not None:
            cached.unpersist()
    return _Written(
        result,
        tuple(output_schema.names),
        rows_quarantined,
        output_report,
        config.quarantine_table if set_aside else None,
    )


@contextlib.contextmanager
def _runtime(config: JobConfig, model: registry.ModelRef, features: tuple[str, ...], reporter: Reporter):
    """The predictor spec for the configured backend; with ``launch: auto``, a sidecar for the run's duration."""
    if config.runtime.backend == "embedded":
        yield EmbeddedSpec(
            model_uri=model.uri,
            local_path=model.local_path,
            flavors=model.flavors,
            features=features,
            threads=config.runtime.embedded.threads,
            tracking_uri=model.tracking_uri,
            registry_uri=model.registry_uri,
        )
        return
    from scoring.adapters import triton_export
    from scoring.adapters.triton import TritonSpec

    triton = config.runtime.triton
    spec = functools.partial(
        TritonSpec,
        model_uri=model.uri,
        model_name=triton_export.triton_model_name(model),
        model_version=model.version,
        features=features,
        protocol=triton.protocol,
        shared_memory=triton.shared_memory,
        timeout_s=triton.timeout_s,
        max_retries=triton.max_retries,
        batch_rows=triton.batch_rows,
        max_inflight=triton.max_inflight,
    )
    if triton.launch == "external":
        yield spec(url=triton.url or ("127.0.0.1:8001" if triton.protocol == "grpc" else "127.0.0.1:8000"))
        return
    from scoring.adapters import triton_server
    from scoring.adapters.triton import serves

    name = triton_export.triton_model_name(model)
    if triton.url and serves(triton.url, triton.protocol, name, model.version):
        reporter.step(f"a Triton server at {triton.url} already serves {name} version {model.version}; using it")
        yield spec(url=triton.url)
        return

    with contextlib.ExitStack() as stack:
        repository = triton.repository or stack.enter_context(tempfile.TemporaryDirectory(prefix="scoring-repo-"))
        export = triton_export.export_model(
            model, repository, target=triton.target, model_config=triton.model, n_features=len(features)
        )
        reporter.step(f"starting a Triton sidecar for {export.model_name} version {export.version} ({repository})")
        handle = stack.enter_context(
            triton_server.running_server(
                repository, models=[export.model_name], ready_timeout_s=max(60.0, triton.timeout_s)
            )
        )
        reporter.step(f"sidecar ready: grpc {handle.grpc_url}, http {handle.http_url}")
        try:
            yield spec(url=handle.grpc_url if triton.protocol == "grpc" else handle.http_url)
        finally:
            from scoring.adapters.runtime import forget_all

            forget_all()  # the driver's client points at a server that is about to stop


def _check_output_schema(spark, path: str, schema, partition_by: list[str]) -> None:
    """Fail before scoring when the existing output table cannot take this run's rows."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return
    table = DeltaTable.forPath(spark, path)
    current = list(table.detail().select("partitionColumns").head()[0])
    if current != list(partition_by):
        raise OutputError(
            f"output.partition_by: {path} is partitioned by {current}, the job says {list(partition_by)}",
            hint=f"set output.partition_by to {current}, or write to a new output.table",
        )
    existing = {f.name: f.dataType.simpleString() for f in table.toDF().schema.fields}
    planned = {f.name: f.dataType.simpleString() for f in schema.fields}
    if existing != planned:
        diff = sorted(set(existing.items()) ^ set(planned.items()))
        raise OutputError(
            f"output.table: {path} has columns {existing}, this run writes {planned} (differences: {diff})",
            hint="write to a new output.table, or keep the model's outputs, keys and partition columns the same",
        )
