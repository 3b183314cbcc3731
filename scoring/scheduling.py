"""What the scheduled scoring DAGs do, as plain functions: ``dags/scoring_dags.py`` only wires them into Airflow.

One DAG per job config with a ``schedule:`` section (see :class:`~scoring.config.ScheduleConfig`); each run scores one
data interval, the partition ``<schedule.partition_column> = '<data interval start, YYYY-MM-DD>'``:

    wait_for_input -> validate_input -> score -> validate_output -> publish

- ``wait_for_input`` (:func:`check_input`) asks delta-rs, not Spark, whether the input has rows in the partition.
- ``validate_input`` / ``validate_output`` run the job's data-quality gates (:func:`validate_input`,
  :func:`validate_output`) on that partition; a failed gate fails the run, so nothing is scored or published.
- ``score`` runs :mod:`scoring.spark_entry` through ``spark-submit`` (or a SparkApplication on Kubernetes) with
  ``--set input.where=<partition>`` and a run id made of the DAG, the Airflow run and the try number.
- ``publish`` (:func:`publish`) appends one row per committed run to ``<output.table>_runs``.

Nothing here imports Airflow: the functions take plain values (the data interval's day, the Airflow run id), so they
can be called and tested without a scheduler.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from scoring.config import JobConfig, ScheduleConfig, load_job_config
from scoring.errors import ConfigError, InputError, OutputError, ScoringError

_LOGGER = logging.getLogger(__name__)

CONF_DIR_ENV = "SCORING_CONF_DIR"
"""Folder of the job configs the DAG factory reads (default: this project's ``conf/jobs``)."""
RUNS_DIR_ENV = "SCORING_RUNS_DIR"
"""Folder for the per-run summaries that ``score`` writes and ``publish`` reads (default: ``$AIRFLOW_HOME/
scoring-runs``). With several Airflow workers, make it a shared volume; without one, ``publish`` falls back to the
output table's commit metadata."""
IMAGE_ENV = "SCORING_IMAGE"
"""Container image for ``schedule.deploy: kubernetes`` (default: a placeholder to replace)."""
DAG_PREFIX = "scoring__"
RUNS_SUFFIX = "_runs"

RUNS_COLUMNS = (
    "dag_id",
    "run_id",
    "data_interval",
    "model_name",
    "model_version",
    "model_uri",
    "input_version",
    "output_version",
    "rows_read",
    "rows_written",
    "rows_rejected",
    "rows_quarantined",
    "committed",
    "published_at",
    "quality",
)
"""Columns of the runs table, one row per published run. ``run_id`` is the scoring run id stamped on the output
rows (``scoring_run_id``); ``rows_read = rows_written + rows_rejected + rows_quarantined`` for a committed run;
``quality`` holds the input and output gate reports as a JSON string."""


@dataclasses.dataclass(frozen=True)
class ScheduledJob:
    """A job config with a ``schedule:`` section, and the DAG it becomes."""

    path: Path
    config: JobConfig

    @property
    def schedule(self) -> ScheduleConfig:
        assert self.config.schedule is not None
        return self.config.schedule

    @property
    def dag_id(self) -> str:
        return dag_id_for(self.config)


def dag_id_for(config: JobConfig) -> str:
    return f"{DAG_PREFIX}{config.name}"


def conf_dir() -> Path:
    """Where the job configs are: ``$SCORING_CONF_DIR``, else this project's ``conf/jobs``."""
    configured = os.environ.get(CONF_DIR_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "conf" / "jobs"


def scheduled_jobs(directory: str | os.PathLike[str] | None = None) -> list[ScheduledJob]:
    """Every ``*.yaml`` job config in `directory` that has a ``schedule:`` section, by file name.

    A config that does not load is an error naming it (all of them at once): the DAG file then fails to import and
    Airflow shows why, instead of a scheduled job silently disappearing.
    """
    directory = Path(directory) if directory is not None else conf_dir()
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: no such folder of job configs", hint=f"set {CONF_DIR_ENV} to the folder of the YAML configs"
        )
    jobs: list[ScheduledJob] = []
    problems: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            config = load_job_config(path)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if config.schedule is not None:
            jobs.append(ScheduledJob(path=path.resolve(), config=config))
    seen: dict[str, Path] = {}
    for job in jobs:
        if job.dag_id in seen:
            problems.append(f"{job.path}: job name {job.config.name!r} is also the name of {seen[job.dag_id]}")
        seen[job.dag_id] = job.path
    if problems:
        raise ConfigError(
            "scheduled job configs that cannot become DAGs:\n" + "\n".join(problems),
            hint="fix the configs above; every scheduled job needs a valid config and a name of its own",
        )
    return jobs


# -- the data interval ------------------------------------------------------------------------------------------------


def interval_day(day: str | None) -> str:
    """The data interval's day as ``YYYY-MM-DD``; a clear error when a run has none (a run without a logical date)."""
    try:
        return dt.date.fromisoformat(str(day)).isoformat()
    except ValueError:
        raise ScoringError(
            f"this DAG run has no data interval day (got {day!r})",
            hint="trigger the DAG with a logical date: each run scores the partition of its data interval",
        ) from None


def partition_predicate(column: str, day: str) -> str:
    """The Spark SQL filter for one day's partition, e.g. ``ds = '2026-11-01'``."""
    return f"{column} = '{interval_day(day)}'"


@dataclasses.dataclass(frozen=True)
class InputCheck:
    """What ``wait_for_input`` found in the input table for one day."""

    ready: bool
    day: str
    where: str | None
    """The filter the run scores (None: the input has no partition column; the whole table is scored)."""
    input_version: int | None
    rows: int | None
    """Rows in the partition per the Delta log's statistics (None when unknown)."""
    reason: str

    def to_xcom(self) -> dict[str, Any]:
        return {"day": self.day, "where": self.where, "input_version": self.input_version, "rows": self.rows}


def check_input(config: JobConfig, day: str) -> InputCheck:
    """Whether the input table has rows for `day`, read from the Delta log with delta-rs (no Spark, no data scan when
    the day is a partition).

    An input without the partition column is ready as soon as the table exists with a version: each run then scores
    the whole table.
    """
    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    schedule = _schedule(config)
    day = interval_day(day)
    path = config.input.table
    try:
        table = DeltaTable(path)
    except TableNotFoundError:
        reason = f"no Delta table at {path} yet"
        return InputCheck(ready=False, day=day, where=None, input_version=None, rows=None, reason=reason)
    version = table.version()
    column = schedule.partition_column
    if column not in [field.name for field in table.schema().fields]:
        reason = f"{path} has no column {column!r}: scoring the whole table at version {version}"
        return InputCheck(ready=True, day=day, where=None, input_version=version, rows=None, reason=reason)
    where = partition_predicate(column, day)
    if column in table.metadata().partition_columns:
        files = pa.table(table.get_add_actions(flatten=True))
        in_day = [
            count
            for value, count in zip(
                files.column(f"partition.{column}").to_pylist(), files.column("num_records").to_pylist(), strict=True
            )
            if value is not None and str(value) == day
        ]
        unknown = any(count is None for count in in_day)
        rows = None if unknown else sum(in_day)
        ready = bool(in_day) and (unknown or rows > 0)
    else:
        import pyarrow.dataset as ds

        found = table.to_pyarrow_dataset().head(1, columns=[column], filter=ds.field(column).cast(pa.string()) == day)
        rows, ready = None, found.num_rows > 0
    reason = (
        f"{path} version {version} has {'rows' if rows is None else f'{rows:,} rows'} where {where}"
        if ready
        else f"{path} version {version} has no rows where {where} yet"
    )
    return InputCheck(ready=ready, day=day, where=where, input_version=version, rows=rows, reason=reason)


# -- the quality gates ------------------------------------------------------------------------------------------------


def run_gate(
    config: JobConfig, which: Literal["input", "output"], *, where: str | None, run_id: str | None = None
) -> dict[str, Any]:
    """Run one quality gate (:func:`scoring.quality.validate`) and return its report, JSON-ready.

    Raises :class:`~scoring.errors.QualityError` when the gate fails: the task fails with the gate's message.
    """
    from scoring import quality

    report = quality.validate(config, which, where=where, run_id=run_id)
    _LOGGER.info(
        "%s gate passed on %s%s%s",
        which,
        config.input.table if which == "input" else config.output.table,
        f" where {where}" if where else "",
        f" (run {run_id})" if run_id else "",
    )
    return report.to_dict()


def found_input(found: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """What ``wait_for_input`` pushed for this DAG run (:meth:`InputCheck.to_xcom`); an error when it pushed nothing."""
    if not found or "day" not in found:
        raise ScoringError(
            f"wait_for_input recorded no input partition for this DAG run (got {found!r})",
            hint="clear wait_for_input (rather than marking it successful) so that it checks the input again",
        )
    return found


def validate_input(config: JobConfig, found: Mapping[str, Any] | None) -> dict[str, Any]:
    """The input gate on the partition ``wait_for_input`` found."""
    return run_gate(config, "input", where=found_input(found).get("where"))


def output_where(config: JobConfig, found: Mapping[str, Any] | None) -> str | None:
    """The partition filter on the output, when the output has the partition column (a key or partition column)."""
    column = _schedule(config).partition_column
    where = found_input(found).get("where")
    return where if where and column in {*config.input.key, *config.output.partition_by} else None


def validate_output(
    config: JobConfig, found: Mapping[str, Any] | None, *, dag_id: str, airflow_run_id: str
) -> dict[str, Any]:
    """The output gate on the rows written by the run that committed for this DAG run."""
    summary = committed_summary(config, dag_id=dag_id, airflow_run_id=airflow_run_id)
    return run_gate(config, "output", where=output_where(config, found), run_id=summary["run_id"])


# -- scoring ----------------------------------------------------------------------------------------------------------


def scoring_run_id_template(dag_id: str) -> str:
    """The run id passed to the job (Airflow template): ``<dag_id>__<Airflow run id>__try<N>``.

    The try number is part of it because the output commit is idempotent per run id (Delta ``txnAppId =
    scoring:<run_id>``): Delta skips a write whose app id already committed. Every new try (a retry after a failed
    attempt, or a task cleared to re-score the day) must write again and replace the partition, even when an earlier
    try had committed before failing, so each try gets its own id; only the very same try executed twice commits once.
    """
    return f"{dag_id}__{{{{ run_id }}}}__try{{{{ ti.try_number }}}}"


def scoring_run_prefix(dag_id: str, airflow_run_id: str) -> str:
    """The start of every scoring run id of one DAG run (any try)."""
    return f"{dag_id}__{airflow_run_id}__try"


def where_template(task_id: str = "wait_for_input") -> str:
    """The partition filter the sensor found (Airflow template); empty when the whole table is scored. Without the
    sensor's value (a sensor marked successful by hand) the template fails rather than score the whole table."""
    return f"{{{{ ti.xcom_pull(task_ids='{task_id}')['where'] or '' }}}}"


def runs_dir() -> Path:
    """Where per-run summaries go: ``$SCORING_RUNS_DIR``, else ``$AIRFLOW_HOME/scoring-runs``."""
    configured = os.environ.get(RUNS_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "scoring-runs"


def summary_path(dag_id: str, airflow_run_id: str) -> Path:
    """The summary file of one DAG run (written by the try that succeeded)."""
    return runs_dir() / dag_id / airflow_run_id / "summary.json"


def summary_path_template(dag_id: str) -> str:
    return str(runs_dir() / dag_id / "{{ run_id }}" / "summary.json")


def prepare_summary(dag_id: str, airflow_run_id: str) -> Path:
    """Before a try of ``score``: the run's folder exists and holds no summary of an earlier try."""
    path = summary_path(dag_id, airflow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def spark_entry_path() -> str:
    """The file ``spark-submit`` runs."""
    from scoring import spark_entry

    return str(Path(spark_entry.__file__).resolve())


def spark_submit_args(job: ScheduledJob) -> list[str]:
    """``application_args`` for ``spark-submit``: the config, the partition, the run id and the summary file."""
    return [
        str(job.path),
        "--set",
        f"input.where={where_template()}",
        "--set",
        f"run_id={scoring_run_id_template(job.dag_id)}",
        "--summary-json",
        summary_path_template(job.dag_id),
    ]


def spark_conf(config: JobConfig) -> dict[str, str]:
    """The Delta/Spark settings ``scoring submit`` uses, with the job's own ``spark.conf`` on top."""
    from scoring.adapters.spark import DEFAULTS

    return {**DEFAULTS, **config.spark.conf}


def kubernetes_manifest(job: ScheduledJob) -> dict[str, Any]:
    """The SparkApplication for ``deploy: kubernetes``, with the same templated arguments as ``spark-submit`` (no
    summary file: the driver runs in a pod, so ``publish`` reads the run from the output table's commit)."""
    from scoring import kubernetes

    return kubernetes.render_manifest(
        job.config,
        f"conf/jobs/{job.path.name}",
        overrides=[f"input.where={where_template()}", f"run_id={scoring_run_id_template(job.dag_id)}"],
        image=os.environ.get(IMAGE_ENV, kubernetes.IMAGE_PLACEHOLDER),
        namespace=job.schedule.namespace,
    )


# -- what the run committed, and publishing it ------------------------------------------------------------------------


def committed_summary(config: JobConfig, *, dag_id: str, airflow_run_id: str) -> dict[str, Any]:
    """The summary of the run that committed for this DAG run.

    Read from the summary file ``score`` wrote; when it is not there (another worker's disk, a Kubernetes driver),
    rebuilt from the newest output commit whose ``userMetadata`` names a run of this DAG run.
    """
    prefix = scoring_run_prefix(dag_id, airflow_run_id)
    path = summary_path(dag_id, airflow_run_id)
    if path.exists():
        summary = json.loads(path.read_text())
        if str(summary.get("run_id", "")).startswith(prefix):
            return summary
        _LOGGER.warning("ignoring %s: it is the summary of run %s, not of %s*", path, summary.get("run_id"), prefix)
    summary = summary_from_history(config.output.table, prefix)
    if summary is None:
        raise OutputError(
            f"no commit to {config.output.table} by a run of {dag_id} {airflow_run_id} (run ids {prefix}<N>)",
            hint="the score task has not committed for this DAG run; clear it to score the day again",
        )
    _LOGGER.info("no summary file at %s; read run %s from the commit history of %s", path, summary["run_id"], path)
    return summary


def summary_from_history(table: str, run_id_prefix: str) -> dict[str, Any] | None:
    """What the newest commit by a run id starting with `run_id_prefix` recorded (delta-rs), or None."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        history = DeltaTable(table).history()
    except TableNotFoundError:
        return None
    for commit in sorted(history, key=lambda c: c.get("version", -1), reverse=True):
        try:
            metadata = json.loads(commit.get("userMetadata") or "{}")
        except json.JSONDecodeError:
            continue
        run_id = metadata.get("scoring_run_id") if isinstance(metadata, dict) else None
        if not (isinstance(run_id, str) and run_id.startswith(run_id_prefix)):
            continue
        rows_read = int(metadata.get("rows_read", 0))
        rows_rejected = int(metadata.get("rows_rejected", 0))
        rows_quarantined = int(metadata.get("rows_quarantined", 0))
        written = (commit.get("operationMetrics") or {}).get("numOutputRows")
        return {
            "job": metadata.get("job"),
            "run_id": run_id,
            "model_name": metadata.get("model_name"),
            "model_version": metadata.get("model_version"),
            "model_uri": metadata.get("model_uri"),
            "requested_model_uri": metadata.get("requested_model_uri"),
            "input_table": metadata.get("input_table"),
            "input_version": metadata.get("input_version"),
            "output_table": table,
            "output_version": commit.get("version"),
            "rows_read": rows_read,
            "rows_written": int(written) if written is not None else rows_read - rows_rejected - rows_quarantined,
            "rows_rejected": rows_rejected,
            "rows_quarantined": rows_quarantined,
            "committed": True,
        }
    return None


def runs_table(config: JobConfig) -> str:
    """The runs table beside the output: ``<output.table>_runs``."""
    return f"{config.output.table.rstrip('/')}{RUNS_SUFFIX}"


def _runs_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("dag_id", pa.string()),
            ("run_id", pa.string()),
            ("data_interval", pa.date32()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("model_uri", pa.string()),
            ("input_version", pa.int64()),
            ("output_version", pa.int64()),
            ("rows_read", pa.int64()),
            ("rows_written", pa.int64()),
            ("rows_rejected", pa.int64()),
            ("rows_quarantined", pa.int64()),
            ("committed", pa.bool_()),
            ("published_at", pa.timestamp("us", tz="UTC")),
            ("quality", pa.string()),
        ]
    )


def published(table: str, run_id: str) -> bool:
    """Whether the runs table already has a row for `run_id`."""
    import pyarrow.dataset as ds
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dataset = DeltaTable(table).to_pyarrow_dataset()
    except TableNotFoundError:
        return False
    return dataset.head(1, columns=["run_id"], filter=ds.field("run_id") == run_id).num_rows > 0


def publish(
    config: JobConfig,
    found: Mapping[str, Any] | None,
    *,
    dag_id: str,
    airflow_run_id: str,
    quality: Mapping[str, Any],
) -> dict[str, Any]:
    """Append one row for the committed run to ``<output.table>_runs`` and return the run's summary.

    Publishing a run twice (a cleared ``publish``) adds nothing: the row of that run id is already there.
    """
    import pyarrow as pa
    from deltalake import write_deltalake

    summary = committed_summary(config, dag_id=dag_id, airflow_run_id=airflow_run_id)
    table = runs_table(config)
    day = interval_day(found_input(found)["day"])
    if published(table, summary["run_id"]):
        _LOGGER.info("run %s is already in %s; nothing appended", summary["run_id"], table)
        return summary
    row = {
        "dag_id": dag_id,
        "run_id": summary["run_id"],
        "data_interval": dt.date.fromisoformat(day),
        "model_name": summary.get("model_name"),
        "model_version": summary.get("model_version"),
        "model_uri": summary.get("model_uri"),
        "input_version": summary.get("input_version"),
        "output_version": summary.get("output_version"),
        "rows_read": summary.get("rows_read"),
        "rows_written": summary.get("rows_written"),
        "rows_rejected": summary.get("rows_rejected"),
        "rows_quarantined": summary.get("rows_quarantined", 0),
        "committed": bool(summary.get("committed")),
        "published_at": dt.datetime.now(dt.UTC),
        "quality": json.dumps(dict(quality), sort_keys=True, default=str),
    }
    write_deltalake(table, pa.Table.from_pylist([row], schema=_runs_schema()), mode="append")
    _LOGGER.info(
        "published %s %s: run %s %s %s version %s (%s), %s rows read, %s written, %s rejected, %s quarantined, "
        "input version %s; row in %s",
        dag_id,
        day,
        summary["run_id"],
        "committed" if row["committed"] else "already committed",
        config.output.table,
        row["output_version"],
        row["model_uri"],
        row["rows_read"],
        row["rows_written"],
        row["rows_rejected"],
        row["rows_quarantined"],
        row["input_version"],
        table,
    )
    return summary


def _schedule(config: JobConfig) -> ScheduleConfig:
    if config.schedule is None:
        raise InputError(
            f"job {config.name!r} has no schedule section", hint="add schedule: {start_date: YYYY-MM-DD} to its config"
        )
    return config.schedule
