"""Airflow DAGs for the scheduled scoring jobs: one DAG, ``scoring__<job name>``, per job config with a ``schedule:``.

Airflow parses this file. It reads the YAML configs in ``$SCORING_CONF_DIR`` (default: this project's ``conf/jobs``)
and wires the functions of :mod:`scoring.deploy.scheduling` into five tasks per job:

    wait_for_input >> score >> [input_gate_report, output_gate_report] >> publish      (and score >> publish)

- ``wait_for_input`` reads the input's Delta log (delta-rs) until the data interval's partition has rows.
- ``score`` runs the job (spark-submit, or a SparkApplication with ``deploy: kubernetes``) on that partition. The job
  runs the quality gates itself, the input gate before scoring and the output gate before the commit, so no Spark
  starts on an Airflow worker. A failed gate, a missing column or an unknown model alias fails ``score`` at once; only
  a transient failure (exit code 75: a model server that did not answer, a concurrent writer) is retried, with the
  job config's ``schedule.retries`` and backoff.
- ``input_gate_report`` / ``output_gate_report`` run whatever ``score`` did (trigger rule ``all_done``) and show the
  gate reports from the job's summary, or its error record, in the task log; the report of a failed gate fails.
- ``publish`` appends the committed run to ``<output.table>_runs``.

One DAG run is one scoring run, ``<dag_id>__<Airflow run id>``: every try of ``score`` in it passes that id.

- A retry finishes what the failed try started: if the output had already committed under that id, the job does not
  score again (it completes the side writes and returns that run); otherwise it scores from scratch. Each run replaces
  exactly the rows it selected, so nothing is duplicated.
- A cleared task, or a cleared DAG run, does the same: a DAG run that already committed returns (and publishes once)
  the run it committed; it does not re-score the day, even if the model alias has moved since.
- ``airflow backfill create --reprocess-behavior completed`` (or ``failed``) does not create a second DAG run for a
  day that has one: Airflow 3.3 keeps one DAG run per logical date (unique ``dag_id, logical_date``) and *clears* the
  existing run (``airflow/models/backfill.py``, ``_handle_clear_run``), which keeps its run id. So it re-scores only
  days that never committed. To re-score committed days (e.g. with a newer model), give the DAG runs a ``rescore``
  tag: ``--dag-run-conf '{"rescore": "model-v4"}'`` (or the trigger form's ``rescore`` field) makes the run id
  ``<dag_id>__<Airflow run id>__rescore-model-v4``, a new scoring run. Triggering a new DAG run for a logical date
  that has one fails in Airflow 3.3 (delete the old DAG run first); the backfill notebook re-scores a range with a
  pinned model version without Airflow.

Configs without a ``schedule:`` section make no DAG.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator
from airflow.sdk import DAG, BaseSensorOperator, Param, PokeReturnValue, TriggerRule, get_current_context, task
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from scoring.deploy import kubernetes, scheduling

_LOGGER = logging.getLogger("scoring.dags")


def _utc(day: dt.date | None) -> dt.datetime | None:
    return None if day is None else dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _run_id(job: scheduling.ScheduledJob, context: Any) -> str:
    """This DAG run's scoring run id (the same string the ``score`` task's template renders)."""
    params = context.get("params") or {}
    return scheduling.scoring_run_id(job.dag_id, context["run_id"], params.get(scheduling.RESCORE_PARAM))


def _fail(failure: scheduling.ScoreFailure, context: Any, cause: BaseException) -> None:
    """Leave the error record for the gate report tasks, then fail the try: retried only when a retry can help."""
    context["ti"].xcom_push(key=scheduling.ERROR_XCOM, value=failure.record())
    if failure.retry:
        raise AirflowException(failure.message()) from cause
    raise AirflowFailException(failure.message()) from cause


class InputPartitionSensor(BaseSensorOperator):
    """Waits until the job's input table has rows in the data interval's partition (delta-rs reads the Delta log;
    no Spark). Pushes what it found (the partition filter, the input version) for the tasks after it."""

    template_fields = ("day",)

    def __init__(self, *, job: scheduling.ScheduledJob, day: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.day = day

    def poke(self, context: Any) -> PokeReturnValue:
        found = scheduling.check_input(self.job.config, self.day)
        self.log.info("%s", found.reason)
        return PokeReturnValue(is_done=found.ready, xcom_value=found.to_xcom() if found.ready else None)


class ScoringSparkSubmitOperator(SparkSubmitOperator):
    """spark-submit of scoring/deploy/spark_submit.py that fails for good unless the job exited with 75 (transient).

    spark-submit exits with the driver's status. Its output, ending with the ``scoring error: ...`` line, is in
    the task log; the job's error record (``--summary-json``) goes to XCom (``scoring_error``) for the gate
    report tasks. On success the task returns the run's summary (XCom ``return_value``)."""

    def __init__(self, *, job: scheduling.ScheduledJob, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job

    def execute(self, context: Any) -> dict[str, Any]:
        path = scheduling.prepare_summary(self.job.dag_id, context["run_id"])
        try:
            super().execute(context)
        except Exception as e:
            process = getattr(self._hook, "_submit_sp", None)  # the provider keeps the Popen; no public accessor
            exit_code = getattr(process, "returncode", None)
            _fail(scheduling.score_failure(exit_code, scheduling.read_run_file(path)), context, e)
        return scheduling.committed_summary(self.job.config, _run_id(self.job, context), scheduling.read_run_file(path))


class ScoringSparkKubernetesOperator(SparkKubernetesOperator):
    """A SparkApplication that fails for good unless the driver exited with 75 (transient).

    Each try renders the job's manifests when it starts (:func:`scoring.deploy.scheduling.kubernetes_manifests`, the same
    rendering as ``scoring render k8s``): the model alias is resolved then, once, and the driver and every pod's
    sidecar get that version. It creates or replaces the job's ConfigMap, then submits the SparkApplication.

    When the driver pod fails, the operator's ``cleanup`` raises; this reads the driver's exit code and the error
    record from the pod's status (its termination message), or the exit code from the SparkApplication's status,
    and decides (:func:`scoring.deploy.kubernetes.driver_outcome`). A driver that never exited on its own (evicted, node
    lost) is retried. On success the task returns the run's summary, read from the output table's commit."""

    template_fields = (*SparkKubernetesOperator.template_fields, "run_overrides")

    def __init__(self, *, job: scheduling.ScheduledJob, run_overrides: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.run_overrides = run_overrides  # the run's --set overrides: templates until Airflow renders the try

    def render_manifests(self) -> kubernetes.Manifests:
        """This try's manifests; the SparkApplication becomes the operator's ``template_spec``."""
        manifests = scheduling.kubernetes_manifests(self.job, list(self.run_overrides))
        self.template_spec = manifests.application
        self.log.info(
            "rendered %s in %s: %s pinned to %s",
            manifests.name,
            manifests.namespace,
            manifests.model.requested_uri,
            manifests.model.uri,
        )
        return manifests

    def _application(self) -> dict[str, Any] | None:
        group, version = kubernetes.API_VERSION.split("/")
        try:
            return self.custom_obj_api.get_namespaced_custom_object(
                group=group, version=version, namespace=self.namespace, plural="sparkapplications", name=self.name
            )
        except Exception as e:  # gone already, or no permission: the pod's status is enough
            self.log.info("could not read SparkApplication %s/%s: %s", self.namespace, self.name, e)
            return None

    def cleanup(self, pod: Any, remote_pod: Any, xcom_result: Any = None, context: Any = None) -> None:
        failed = remote_pod is not None and getattr(remote_pod.status, "phase", None) != "Succeeded"
        application = self._application() if failed else None  # before the operator deletes it
        try:
            super().cleanup(pod=pod, remote_pod=remote_pod, xcom_result=xcom_result, context=context)
        except AirflowSkipException:
            raise
        except AirflowException as e:
            outcome = kubernetes.driver_outcome(remote_pod, application)
            self.log.info("%s", outcome.describe())
            _fail(scheduling.score_failure(outcome.exit_code, outcome.record), context or get_current_context(), e)

    def execute(self, context: Any) -> dict[str, Any]:
        manifests = self.render_manifests()
        done = kubernetes.apply_config_map(self.client, manifests.config_map)
        self.log.info("%s ConfigMap %s", done, manifests.config_map["metadata"]["name"])
        super().execute(context)
        return scheduling.committed_summary(self.job.config, _run_id(self.job, context))


def _score_task(job: scheduling.ScheduledJob):
    """``score``: the job through spark-submit and the job's Spark connection (``deploy: local``), or a
    SparkApplication through spark-operator (``deploy: kubernetes``), rendered per run. The Kubernetes variant is
    built, its manifests validate against the Kubernetes and spark-operator schemas and its failure decision is tested
    on pod and SparkApplication statuses in the tests, but it has not run against a cluster: there is none where this
    project is developed."""
    schedule = job.schedule
    retry = {
        "retries": schedule.retries,
        "retry_delay": dt.timedelta(seconds=schedule.retry_delay_s),
        "retry_exponential_backoff": 2.0,  # the delay doubles with each retry (Airflow 3.3 takes the multiplier)
    }
    if schedule.deploy == "kubernetes":
        operator = ScoringSparkKubernetesOperator(
            task_id="score",
            job=job,
            run_overrides=scheduling.kubernetes_overrides(job),
            namespace=kubernetes.namespace_for(job.config),
            kubernetes_conn_id=schedule.kubernetes_conn_id,
            get_logs=True,
            **retry,
        )
        # The operator would read every templated string ending in "yaml" as a template file; the manifest's paths
        # (the job config) are values, not templates.
        operator.template_ext = ()
        return operator

    from scoring.adapters.spark import delta_package

    return ScoringSparkSubmitOperator(
        task_id="score",
        job=job,
        application=scheduling.spark_entry_path(),
        application_args=scheduling.spark_submit_args(job),
        packages=delta_package(),
        conf=scheduling.spark_conf(job.config),
        conn_id=schedule.spark_conn_id,
        name=f"scoring-{job.config.name}",
        **retry,
    )


def _gate_report(job: scheduling.ScheduledJob, which: str) -> dict[str, Any]:
    """Show the `which` gate's report that ``score`` left (summary or error record); fail when the gate failed,
    skip when it never ran."""
    ti = get_current_context()["ti"]
    record = ti.xcom_pull(task_ids="score", key=scheduling.ERROR_XCOM)
    gate = job.config.quality.input if which == "input" else job.config.quality.output
    view = scheduling.gate_view(
        which,  # type: ignore[arg-type]
        ti.xcom_pull(task_ids="score"),
        (record or {}).get("error"),
        expectations=len(gate.expectations),
    )
    _LOGGER.info("%s", view.text)
    if view.status == "failed":
        raise AirflowFailException(view.text)
    if view.status == "not run":
        raise AirflowSkipException(view.text)
    return {"status": view.status, **({"report": dict(view.report)} if view.report else {})}


def build_dag(job: scheduling.ScheduledJob) -> DAG:
    """The DAG of one scheduled job."""
    config, schedule = job.config, job.schedule
    with DAG(
        dag_id=job.dag_id,
        # A data-interval timetable, whatever [scheduler] create_cron_data_intervals says: the run for a day starts
        # when the day is over, and data_interval_start is that day (a cron trigger would make it the run's own day).
        schedule=CronDataIntervalTimetable(schedule.cron, timezone="UTC"),
        start_date=_utc(schedule.start_date),
        end_date=_utc(schedule.end_date),
        catchup=schedule.catchup,
        max_active_runs=1,
        tags=["scoring", *schedule.tags],
        default_args={"owner": "scoring", "retries": 0},
        params={
            scheduling.RESCORE_PARAM: Param(
                "",
                type="string",
                pattern=r"^[A-Za-z0-9._-]{0,64}$",
                description="Leave empty. A tag (e.g. the new model version) makes this DAG run a new scoring run: "
                "a day that already committed is scored again instead of returning its committed run.",
            )
        },
        description=f"Score {config.input.table} with {config.model.uri} into {config.output.table}",
        doc_md=(
            f"Scoring job `{config.name}` from `{job.path}`.\n\n"
            f"Each run scores `{schedule.partition_column} = '<data interval start>'` of `{config.input.table}` "
            f"with `{config.model.uri}` into `{config.output.table}` and records the run in "
            f"`{scheduling.runs_table(config)}`.\n\n"
            "One DAG run is one scoring run (`<dag_id>__<run_id>`): a retry or a cleared task finishes or returns "
            "what the run committed, it does not score the day again. `score` retries transient failures only "
            "(exit code 75). To re-score committed days, set the `rescore` param (e.g. `airflow backfill create "
            '--reprocess-behavior completed --dag-run-conf \'{"rescore": "model-v4"}\'`).'
        ),
    ) as dag:
        wait_for_input = InputPartitionSensor(
            task_id="wait_for_input",
            job=job,
            day="{{ data_interval_start | ds }}",
            mode="reschedule",
            poke_interval=schedule.sensor_poke_interval_s,
            timeout=schedule.sensor_timeout_s,
        )
        score = _score_task(job)

        @task(task_id="input_gate_report", trigger_rule=TriggerRule.ALL_DONE)
        def input_gate_report() -> dict[str, Any]:
            return _gate_report(job, "input")

        @task(task_id="output_gate_report", trigger_rule=TriggerRule.ALL_DONE)
        def output_gate_report() -> dict[str, Any]:
            return _gate_report(job, "output")

        @task(task_id="publish")
        def publish() -> dict[str, Any]:
            context = get_current_context()
            ti = context["ti"]
            return scheduling.publish(
                config,
                ti.xcom_pull(task_ids="wait_for_input"),
                dag_id=job.dag_id,
                run_id=_run_id(job, context),
                summary=ti.xcom_pull(task_ids="score"),
            )

        reports = [input_gate_report(), output_gate_report()]
        published = publish()
        wait_for_input >> score >> reports >> published
        score >> published  # a failed score fails publish (upstream_failed), whatever the reports did
    return dag


for _job in scheduling.scheduled_jobs():
    globals()[_job.dag_id] = build_dag(_job)
