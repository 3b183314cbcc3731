"""What the scheduled scoring DAGs do, as plain functions: ``dags/scoring_dags.py`` only wires them into Airflow.

One DAG per job config with a ``schedule:`` section (see :class:`~scoring.config.ScheduleConfig`); each run scores one
data interval, the partition ``<schedule.partition_column> = '<data interval start, YYYY-MM-DD>'``:

    wait_for_input >> score >> [input_gate_report, output_gate_report] >> publish      (and score >> publish)

- ``wait_for_input`` (:func:`check_input`) asks the Delta log (delta-rs, no Spark) whether the partition has rows.
- ``score`` runs :mod:`scoring.deploy.spark_submit` through ``spark-submit`` (or a SparkApplication on Kubernetes) with
  ``--set input.where=<partition>`` and the run id ``<dag_id>__<Airflow run id>`` (:func:`scoring_run_id`). The
  job runs the quality gates itself: the input gate before scoring, the output gate before the commit. Its exit code
  says whether a retry can help (:func:`retry_can_help`): only a transient failure (75) is retried.
- ``input_gate_report`` / ``output_gate_report`` (:func:`gate_view`) show the gate reports the job left in its
  summary, or its error record, in the task log; the task of a failed gate fails. No Spark on the Airflow worker.
- ``publish`` (:func:`publish`) appends one row per committed run to ``<output.table>_runs``.

One DAG run is one scoring run: every try of ``score`` in a DAG run (a retry, a cleared task, a cleared DAG run, a
backfill that reprocesses the run) passes the same run id, and the engine finishes what an earlier try started: when
the output already committed under that id, it does not score again. A new scoring run needs a new DAG run, or the
DAG run's ``rescore`` param (:data:`RESCORE_PARAM`).

Nothing here imports Airflow: the functions take plain values (the data interval's day, the Airflow run id), so they
can be called and tested without a scheduler.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from scoring.adapters import catalog
from scoring.columns import SCORING_RUN_ID
from scoring.config import JobConfig, ScheduleConfig, load_job_config
from scoring.deploy.outcome import ScoreFailure as ScoreFailure  # a score try's failure: re-exported for the DAG
from scoring.deploy.outcome import retry_can_help as retry_can_help
from scoring.deploy.outcome import score_failure as score_failure
from scoring.errors import ConfigError, InputError, OutputError, QualityError, ScoringError

_LOGGER = logging.getLogger(__name__)

CONF_DIR_ENV = "SCORING_CONF_DIR"
"""Folder of the job configs the DAG factory reads (default: this project's ``conf/jobs``)."""
RUNS_DIR_ENV = "SCORING_RUNS_DIR"
"""Folder where ``spark-submit`` leaves the run's summary (or error record) for the ``score`` task, on the worker
that runs it (default: ``$AIRFLOW_HOME/scoring-runs``). The task hands it on as XCom."""
IMAGE_ENV = "SCORING_IMAGE"
"""Container image for ``schedule.deploy: kubernetes`` when the config's ``kubernetes.image`` names none (default: a
placeholder to replace); read by :func:`scoring.deploy.kubernetes.image_for`."""
DAG_PREFIX = "scoring__"
RUNS_SUFFIX = "_runs"
RESCORE_PARAM = "rescore"
"""DAG param: a tag that makes a DAG run a new scoring run (``<dag_id>__<Airflow run id>__rescore-<tag>``). Empty
(the default): the DAG run's own run id, so a cleared or reprocessed DAG run returns what it committed."""
ERROR_XCOM = "scoring_error"
"""XCom key under which a failed ``score`` task leaves the job's error record for the gate report tasks."""

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
``output_version`` is the version of the run's own commit; ``committed`` is False when that commit was made by an
earlier attempt of the same run id (a retry that found it committed); ``quality`` holds the input and output gate
reports as a JSON string. The row is :meth:`~scoring.engine.record.RunRecord.to_runs_row`."""


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
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "conf" / "jobs"


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
            named = [
                k
                for k, v in (("input.table", config.input.table), ("output.table", config.output.table))
                if catalog.is_name(v)
            ]
            if named:  # the sensor and the runs table read with delta-rs, which knows no catalog
                problems.append(
                    f"{path}: {' and '.join(named)} name tables in Spark's catalog; a scheduled job's sensor and runs "
                    "table read tables without Spark, so give their locations (DESCRIBE DETAIL <name> shows them)"
                )
                continue
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
    """Rows in the partition per the Delta log's statistics (None when the column is not a partition column)."""
    reason: str

    def to_xcom(self) -> dict[str, Any]:
        return {"day": self.day, "where": self.where, "input_version": self.input_version, "rows": self.rows}


def check_input(config: JobConfig, day: str) -> InputCheck:
    """Whether the input table has rows for `day`, read from the Delta log with delta-rs (no Spark, no data scan when
    the day is a partition; :mod:`scoring.adapters.deltalog`).

    An input without the partition column is ready as soon as the table exists with a version: each run then scores
    the whole table.
    """
    from scoring.adapters import deltalog

    schedule = _schedule(config)
    day = interval_day(day)
    path = config.input.table
    snap = deltalog.snapshot(path, key="input.table")
    if snap is None:
        reason = f"no Delta table at {path} yet"
        return InputCheck(ready=False, day=day, where=None, input_version=None, rows=None, reason=reason)
    column = schedule.partition_column
    if column not in snap.columns:
        reason = f"{path} has no column {column!r}: scoring the whole table at version {snap.version}"
        return InputCheck(ready=True, day=day, where=None, input_version=snap.version, rows=None, reason=reason)
    where = partition_predicate(column, day)
    if column in snap.partition_columns:
        rows: int | None = deltalog.partition_rows(snap, column, [day]).get(day, 0)
        ready = bool(rows)
    else:
        rows, ready = None, deltalog.has_rows(snap, column, day)
    reason = (
        f"{path} version {snap.version} has {'rows' if rows is None else f'{rows:,} rows'} where {where}"
        if ready
        else f"{path} version {snap.version} has no rows where {where} yet"
    )
    return InputCheck(ready=ready, day=day, where=where, input_version=snap.version, rows=rows, reason=reason)


def found_input(found: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """What ``wait_for_input`` pushed for this DAG run (:meth:`InputCheck.to_xcom`); an error when it pushed nothing."""
    if not found or "day" not in found:
        raise ScoringError(
            f"wait_for_input recorded no input partition for this DAG run (got {found!r})",
            hint="clear wait_for_input (rather than marking it successful) so that it checks the input again",
        )
    return found


# -- scoring ----------------------------------------------------------------------------------------------------------

_TAG = re.compile(r"[A-Za-z0-9._-]{1,64}")


def scoring_run_id(dag_id: str, airflow_run_id: str, rescore: str | None = None) -> str:
    """The scoring run id of a DAG run: ``<dag_id>__<Airflow run id>``, or ``...__rescore-<tag>`` with the DAG run's
    ``rescore`` param. The same for every try of the DAG run: one DAG run is one logical scoring run."""
    if not rescore:
        return f"{dag_id}__{airflow_run_id}"
    if not _TAG.fullmatch(rescore):
        raise ConfigError(
            f"param {RESCORE_PARAM}={rescore!r}: use up to 64 letters, digits, '.', '_' or '-'",
            hint='e.g. --dag-run-conf \'{"rescore": "model-v4"}\'',
        )
    return f"{dag_id}__{airflow_run_id}__rescore-{rescore}"


def scoring_run_id_template(dag_id: str) -> str:
    """:func:`scoring_run_id` as an Airflow template (rendered by the ``score`` task).

    No try number: Delta's ``txnAppId`` is ``scoring:<run_id>``, so a retry, or a cleared task, of a DAG run whose
    output already committed does not score or commit again; the engine completes what the earlier try left undone
    and the task returns that run. To score a committed day again (a newer model), start a new scoring run: a new DAG
    run, or the ``rescore`` param (:data:`RESCORE_PARAM`).
    """
    return (
        f"{dag_id}__{{{{ run_id }}}}{{{{ ('__rescore-' ~ params.{RESCORE_PARAM}) if params.{RESCORE_PARAM} else '' }}}}"
    )


def where_template(task_id: str = "wait_for_input") -> str:
    """The partition filter the sensor found (Airflow template); empty when the whole table is scored. Without the
    sensor's value (a sensor marked successful by hand) the template fails rather than score the whole table."""
    return f"{{{{ ti.xcom_pull(task_ids='{task_id}')['where'] or '' }}}}"


def runs_dir() -> Path:
    """Where spark-submit leaves run summaries: ``$SCORING_RUNS_DIR``, else ``$AIRFLOW_HOME/scoring-runs``."""
    configured = os.environ.get(RUNS_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser() / "scoring-runs"


def summary_path(dag_id: str, airflow_run_id: str) -> Path:
    """The file a try of ``score`` gets its job's summary, or error record, in."""
    return runs_dir() / dag_id / airflow_run_id / "summary.json"


def summary_path_template(dag_id: str) -> str:
    return str(runs_dir() / dag_id / "{{ run_id }}" / "summary.json")


def prepare_summary(dag_id: str, airflow_run_id: str) -> Path:
    """Before a try of ``score``: the run's folder exists and holds nothing from an earlier try."""
    path = summary_path(dag_id, airflow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def read_run_file(path: Path) -> dict[str, Any] | None:
    """What the job left in `path`: its summary, or ``{"error": {...}}``; None when there is nothing readable."""
    try:
        found = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def spark_entry_path() -> str:
    """The file ``spark-submit`` runs."""
    from scoring.deploy import spark_submit as spark_entry

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


def kubernetes_overrides(job: ScheduledJob) -> list[str]:
    """The ``--set`` overrides of a ``deploy: kubernetes`` run, as Airflow templates (the ``score`` task renders them):
    the same partition filter and run id as ``spark-submit``. No summary file: the driver runs in a pod; its error
    record comes back in the pod's termination message, and a committed run is read from the output table's commit."""
    return [f"input.where={where_template()}", f"run_id={scoring_run_id_template(job.dag_id)}"]


def kubernetes_manifests(job: ScheduledJob, overrides: list[str] | None = None):
    """The manifests (:class:`scoring.deploy.kubernetes.Manifests`) of one ``deploy: kubernetes`` run, rendered when the run
    starts: the model alias is resolved now, once, and the driver and every sidecar's export get that version. The
    same rendering as ``scoring render k8s``; `overrides` are :func:`kubernetes_overrides` as rendered for the run."""
    from scoring.deploy import kubernetes

    return kubernetes.render(
        job.config,
        job.path,
        overrides=kubernetes_overrides(job) if overrides is None else overrides,
    )


# -- the gate reports -------------------------------------------------------------------------------------------------

GateStatus = Literal["passed", "failed", "not configured", "not run"]
_GATE_MESSAGE = re.compile(r"^(input|output) gate failed")


def failed_gate(error: Mapping[str, Any] | None) -> str | None:
    """Which gate (``input`` / ``output``) a job's error record says failed; None when the error is not a gate's."""
    if not error or error.get("type") != QualityError.__name__:
        return None
    if error.get("gate") in ("input", "output"):
        return str(error["gate"])
    found = _GATE_MESSAGE.match(str(error.get("message") or ""))
    return found.group(1) if found else None


@dataclasses.dataclass(frozen=True)
class GateView:
    """What a gate report task shows for one gate of one DAG run."""

    which: str
    status: GateStatus
    text: str
    """The report (or why there is none), for the task log."""
    report: Mapping[str, Any] | None = None


def format_gate_report(which: str, report: Mapping[str, Any]) -> str:
    """A gate report (``summary["quality"][which]``) as lines for a task log: the verdict, then one line per
    expectation with what was observed."""
    verdict = "passed" if report.get("success") else "FAILED"
    rows = report.get("rows")
    policy = f" (policy {report['policy']})" if report.get("policy") else ""
    checked = "" if rows is None else f"{rows:,} rows checked, "
    lines = [f"{which} gate {verdict}{policy}: {checked}{report.get('quarantined', 0):,} quarantined"]
    for result in report.get("results") or ():
        observed = result.get("observed", result.get("observed_value"))
        if result.get("unexpected_count") is not None:
            observed = f"{result['unexpected_count']:,} unexpected of {result.get('element_count'):,}"
            if result.get("sample"):
                observed += f", e.g. {list(result['sample'])[:5]}"
        mark = "ok  " if result.get("success") else "FAIL"
        lines.append(f"  {mark} {result.get('expectation')}: {observed}")
    return "\n".join(lines)


def gate_view(
    which: Literal["input", "output"],
    summary: Mapping[str, Any] | None,
    error: Mapping[str, Any] | None,
    *,
    expectations: int,
) -> GateView:
    """What the ``<which>_gate_report`` task shows, from what ``score`` left: its summary (a run that committed, or
    had already committed) or its error record (a failed try; ``error`` is the record's ``error`` part).
    `expectations`: how many expectations the job's gate has."""
    if summary is not None:
        report = (summary.get("quality") or {}).get(which)
        if report is not None:
            status: GateStatus = "passed" if report.get("success") else "failed"
            return GateView(which, status, format_gate_report(which, report), report)
        if not expectations:
            return GateView(which, "not configured", f"no {which} expectations in this job (quality.{which})")
        return GateView(
            which, "passed", f"the {which} gate passed when run {summary.get('run_id')} committed (no report left)"
        )
    if error is None:
        return GateView(which, "not run", "score left no summary and no error record: the job did not run")
    gate = failed_gate(error)
    message = f"{error.get('type')}: {error.get('message')}"
    if gate == which:
        hint = f"\n  how to fix: {error['hint']}" if error.get("hint") else ""
        return GateView(which, "failed", f"{which} gate FAILED: {message}{hint}")
    if gate == "output" and which == "input":
        status = "passed" if expectations else "not configured"
        return GateView(which, status, "the input gate passed; the job failed later, at the output gate")
    if gate == "input":
        return GateView(which, "not run", f"the {which} gate did not run: the input gate failed first")
    return GateView(which, "not run", f"the {which} gate has no verdict: the job failed ({message})")


# -- what the run committed, and publishing it ------------------------------------------------------------------------


def summary_from_history(table: str, run_id: str) -> dict[str, Any] | None:
    """The summary of `run_id` rebuilt from its commit to `table` (delta-rs reads the commit's ``userMetadata``,
    :meth:`~scoring.engine.record.RunRecord.from_commit`), or None when that run id has no commit there."""
    from scoring.adapters import deltalog
    from scoring.engine.record import RunRecord

    for commit in deltalog.history(table, key="output.table"):
        metadata = commit.metadata
        if metadata is not None and metadata.get(SCORING_RUN_ID) == run_id:
            return RunRecord.from_commit(metadata, version=commit.version).to_dict()
    return None


def committed_summary(config: JobConfig, run_id: str, summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The summary of the committed run `run_id`: `summary` (what the job left) when it names this run's output
    commit (made now, or by an earlier attempt of the same run id); otherwise rebuilt from that commit of the output
    table (a Kubernetes driver leaves no summary on the Airflow worker)."""
    if summary is not None and summary.get("run_id") != run_id:
        _LOGGER.warning("ignoring the summary of run %s: this DAG run's run id is %s", summary.get("run_id"), run_id)
        summary = None
    if summary is not None and summary.get("output_version") is not None:
        return dict(summary)
    found = summary_from_history(config.output.table, run_id)
    if found is None:
        raise OutputError(
            f"run {run_id} has no commit in {config.output.table}",
            hint="the score task has not committed for this DAG run; clear it to score the day",
        )
    _LOGGER.info("read run %s from its commit of %s (version %s)", run_id, config.output.table, found["output_version"])
    return found


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
    from scoring.adapters import deltalog

    return deltalog.count_where(table, "run_id", run_id, key="runs table") > 0


def publish(
    config: JobConfig,
    found: Mapping[str, Any] | None,
    *,
    dag_id: str,
    run_id: str,
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one row for the committed run `run_id` to ``<output.table>_runs`` and return the run's summary.

    `summary` is what ``score`` returned (:func:`committed_summary` completes it from the commit when needed).
    Publishing a run twice (a cleared ``publish``, a cleared DAG run that had committed) adds nothing: the row of
    that run id is already there.
    """
    import pyarrow as pa

    from scoring.adapters import deltalog
    from scoring.engine.record import RunRecord

    summary = committed_summary(config, run_id, summary)
    table = runs_table(config)
    day = interval_day(found_input(found)["day"])
    if published(table, run_id):
        _LOGGER.info("run %s is already in %s; nothing appended", run_id, table)
        return summary
    row = RunRecord.from_dict(summary).to_runs_row(
        dag_id=dag_id, data_interval=dt.date.fromisoformat(day), published_at=dt.datetime.now(dt.UTC)
    )
    deltalog.append(table, pa.Table.from_pylist([row], schema=_runs_schema()), key="runs table")
    _LOGGER.info(
        "published %s %s: run %s, %s version %s (%s), %s rows read, %s written, %s rejected, %s quarantined, "
        "input version %s; row in %s",
        dag_id,
        day,
        run_id,
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


def describe_latest_run(table: str) -> str:
    """The newest row of a runs table (by ``published_at``), one ``column: value`` per line; for ``make
    demo-airflow`` and a quick look."""
    from scoring.adapters import deltalog

    rows = deltalog.read(table, RUNS_COLUMNS, key="runs table")
    if rows is None or rows.num_rows == 0:
        raise OutputError(f"no runs table at {table}, or it is empty", hint="run the DAG first")
    latest = max(rows.to_pylist(), key=lambda row: row["published_at"])
    width = max(map(len, RUNS_COLUMNS))
    lines = [f"{table}: {rows.num_rows} run(s) published; the latest:"]
    for name in RUNS_COLUMNS:
        value = latest[name]
        if name == "quality":
            value = ", ".join(
                f"{which} gate {'passed' if report.get('success') else 'failed'}"
                for which, report in sorted(json.loads(value or "{}").items())
            )
        lines.append(f"  {name:<{width}}  {value}")
    return "\n".join(lines)


def _schedule(config: JobConfig) -> ScheduleConfig:
    if config.schedule is None:
        raise InputError(
            f"job {config.name!r} has no schedule section", hint="add schedule: {start_date: YYYY-MM-DD} to its config"
        )
    return config.schedule
