"""Airflow DAGs for the scheduled scoring jobs: one DAG, ``scoring__<job name>``, per job config with a ``schedule:``.

Airflow parses this file. It reads the YAML configs in ``$SCORING_CONF_DIR`` (default: this project's ``conf/jobs``)
and wires the functions of :mod:`scoring.scheduling` into five tasks per job:

    wait_for_input >> validate_input >> score >> validate_output >> publish

Each run scores its data interval's partition (``<schedule.partition_column> = '<data_interval_start | ds>'``); a
re-run or a cleared task replaces that partition only. Configs without a ``schedule:`` section make no DAG.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, BaseSensorOperator, PokeReturnValue, chain, get_current_context, task
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable

from scoring import scheduling


def _utc(day: dt.date | None) -> dt.datetime | None:
    return None if day is None else dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _pull(task_id: str) -> Any:
    return get_current_context()["ti"].xcom_pull(task_ids=task_id)


def _airflow_run_id() -> str:
    return get_current_context()["run_id"]


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


def _score_task(job: scheduling.ScheduledJob):
    """``score``: spark-submit of scoring/spark_entry.py through the job's Spark connection (``deploy: local``), or a
    SparkApplication through spark-operator (``deploy: kubernetes``). The Kubernetes variant is built and its templates
    render in the tests, but it has not run against a cluster: there is none where this project is developed."""
    schedule = job.schedule
    retry = {
        "retries": schedule.retries,
        "retry_delay": dt.timedelta(seconds=schedule.retry_delay_s),
        "retry_exponential_backoff": 2.0,  # the delay doubles with each retry (Airflow 3.3 takes the multiplier)
    }
    # The job's run id is "<dag_id>__<Airflow run id>__try<N>" (scheduling.scoring_run_id_template). The try number
    # is in it because the output commit is idempotent per run id (Delta txnAppId = scoring:<run_id>): a retry or a
    # cleared task must commit again and replace the day's partition even when an earlier try committed before it
    # failed, so it needs a new id; only the very same try executed twice is skipped as already committed.
    if schedule.deploy == "kubernetes":
        from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

        operator = SparkKubernetesOperator(
            task_id="score",
            template_spec=scheduling.kubernetes_manifest(job),
            namespace=schedule.namespace,
            kubernetes_conn_id=schedule.kubernetes_conn_id,
            get_logs=True,
            **retry,
        )
        # The operator would read every templated string ending in "yaml" as a template file; the manifest's paths
        # (the job config, the pod template) are values, not templates.
        operator.template_ext = ()
        return operator

    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from scoring.adapters.spark import delta_package

    # spark_entry prints "scoring error: <message>" as its last lines on failure; the operator logs spark-submit's
    # output and puts its tail in the task's error, so the task log ends with the scoring error.
    return SparkSubmitOperator(
        task_id="score",
        application=scheduling.spark_entry_path(),
        application_args=scheduling.spark_submit_args(job),
        packages=delta_package(),
        conf=scheduling.spark_conf(job.config),
        conn_id=schedule.spark_conn_id,
        name=f"scoring-{job.config.name}",
        pre_execute=lambda context: scheduling.prepare_summary(job.dag_id, context["run_id"]),
        **retry,
    )


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
        description=f"Score {config.input.table} with {config.model.uri} into {config.output.table}",
        doc_md=(
            f"Scoring job `{config.name}` from `{job.path}`.\n\n"
            f"Each run scores `{schedule.partition_column} = '<data interval start>'` of `{config.input.table}` "
            f"with `{config.model.uri}` into `{config.output.table}` and records the run in "
            f"`{scheduling.runs_table(config)}`."
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

        @task(task_id="validate_input")
        def validate_input() -> dict[str, Any]:
            return scheduling.validate_input(config, _pull("wait_for_input"))

        @task(task_id="validate_output")
        def validate_output() -> dict[str, Any]:
            found = _pull("wait_for_input")
            return scheduling.validate_output(config, found, dag_id=job.dag_id, airflow_run_id=_airflow_run_id())

        @task(task_id="publish")
        def publish() -> dict[str, Any]:
            return scheduling.publish(
                config,
                _pull("wait_for_input"),
                dag_id=job.dag_id,
                airflow_run_id=_airflow_run_id(),
                quality={"input": _pull("validate_input"), "output": _pull("validate_output")},
            )

        chain(wait_for_input, validate_input(), _score_task(job), validate_output(), publish())
    return dag


for _job in scheduling.scheduled_jobs():
    globals()[_job.dag_id] = build_dag(_job)
