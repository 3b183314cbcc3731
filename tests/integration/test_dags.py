"""The Airflow DAGs built from job configs: parsed by a real DagBag, run end to end with ``dag.test()`` against a real
metadata database (SQLite), real spark-submit, real Delta tables and a real MLflow registry (and, for the transient
failure, a Triton client pointed at a port where no server listens).

Airflow reads its configuration when it is first imported, so the ``airflow_home`` fixture sets the environment first
and every Airflow import in this file happens after it (no module-level Airflow import).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import DAYS, delta_version, read_delta

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"

pytestmark = [
    # dag.test() starts Airflow's in-process execution API, whose svcs -> fastapi -> starlette.testclient import warns
    # (starlette wants its httpx2 package; Airflow 3.3 pins httpx).
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated:UserWarning"),
]


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """A throw-away Airflow: AIRFLOW_HOME in a temporary folder, a SQLite metadata DB created from the ORM, the Spark
    connection from an environment variable (master local[2]), and spark-submit on PATH."""
    if "airflow" in sys.modules:
        pytest.fail("airflow was imported before the airflow_home fixture set AIRFLOW_HOME; it must be imported after")
    home = tmp_path_factory.mktemp("airflow")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # host = the master: a "spark" connection with a host and no port is used as `--master <host>`
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "SCORING_RUNS_DIR": str(home / "scoring-runs"),
        # spark-submit (the operator runs it by name) and the python it starts come from this environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        from airflow.utils import db

        db.initdb()
        yield home
    # Airflow configured the root logger (INFO, to this session's captured output); give it back.
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]


@pytest.fixture
def conf_dir(airflow_home, tmp_path, monkeypatch):
    """An empty folder of job configs that the DAG factory reads (SCORING_CONF_DIR)."""
    directory = tmp_path / "jobs"
    directory.mkdir()
    monkeypatch.setenv("SCORING_CONF_DIR", str(directory))
    return directory


def _write(directory: Path, name: str, tree: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **tree}, sort_keys=False))
    return path


def _dagbag():
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag


def _scheduled_job(
    lake, name: str, *, input_expectations=(), model="models:/onnx_clf@champion", retries=0, **sections
) -> dict:
    tree = lake.job(
        name,
        model={"uri": model},
        quality={
            "input": {"expectations": list(input_expectations)},
            "output": {"expectations": [{"type": "between", "column": "label", "min": 0, "max": 1}]},
        },
        schedule={
            "start_date": DAYS[0],
            "partition_column": "ds",
            "retries": retries,
            "retry_delay_s": 0,
            "sensor_poke_interval_s": 1,
        },
        **sections,
    )
    tree.pop("name")
    tree.pop("spark")  # under spark-submit the connection's master decides
    return tree


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _tries(dag_run, task_id: str) -> int:
    return dag_run.get_task_instance(task_id).try_number


class _FakeTI:
    """What templates see of a task instance: the sensor's XCom."""

    def __init__(self, found):
        self.found = found

    def xcom_pull(self, task_ids):
        assert task_ids == "wait_for_input"
        return self.found


RUN_ID = "scheduled__2026-11-02T00:00:00+00:00"
FOUND = {"day": "2026-11-02", "where": "ds = '2026-11-02'", "input_version": 0, "rows": 1000}


def _context(found=FOUND, rescore=""):
    """What a worker renders templates with (the parts our templates use)."""
    return {"run_id": RUN_ID, "ti": _FakeTI(found), "params": {"rescore": rescore}}


def _midnight(day: str) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), tzinfo=dt.UTC)


def _logical_date_for(day: str) -> dt.datetime:
    """A manual run at midnight after `day` covers `day` (the data interval that just ended)."""
    return _midnight(day) + dt.timedelta(days=1)


def _log(capfd, caplog) -> str:
    """What the tasks logged: dag.test() runs them in this process; Airflow's own lines and the spark-submit output
    reach the process's output (capfd), our loggers' lines the logging records (caplog)."""
    return "".join(capfd.readouterr()) + caplog.text


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_dag_per_scheduled_config_and_none_for_the_others(conf_dir):
    shutil.copy(ROOT / "conf" / "jobs" / "nightly.yaml", conf_dir)
    shutil.copy(ROOT / "conf" / "jobs" / "demo.yaml", conf_dir)  # no schedule: section
    bag = _dagbag()
    assert sorted(bag.dag_ids) == ["scoring__nightly"]


def test_the_dag_waits_scores_reports_the_gates_and_publishes(conf_dir, airflow_home):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    shutil.copy(ROOT / "conf" / "jobs" / "nightly.yaml", conf_dir)
    dag = _dagbag().dags["scoring__nightly"]
    reports = {"input_gate_report", "output_gate_report"}
    assert set(dag.task_ids) == {"wait_for_input", "score", "publish", *reports}
    assert dag.get_task("score").upstream_task_ids == {"wait_for_input"}
    for report in reports:
        assert dag.get_task(report).upstream_task_ids == {"score"}
        assert dag.get_task(report).trigger_rule == "all_done"  # they show a failed job's gate report too
    assert dag.get_task("publish").upstream_task_ids == {"score", *reports}
    assert (
        dag.get_task("publish").trigger_rule == "all_success" and dag.get_task("publish").downstream_task_ids == set()
    )

    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable" and dag.timetable.expression == "0 0 * * *"
    assert dag.start_date == dt.datetime(2026, 11, 1, tzinfo=dt.UTC) and dag.end_date is None
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.tags) == {"scoring", "demo"}
    assert dag.params["rescore"] == ""

    sensor = dag.get_task("wait_for_input")
    assert sensor.mode == "reschedule" and sensor.poke_interval == 60 and sensor.timeout == 21600
    score = dag.get_task("score")
    assert isinstance(score, SparkSubmitOperator) and type(score).__name__ == "ScoringSparkSubmitOperator"
    assert score.retries == 2 and score.retry_exponential_backoff == 2.0
    assert score.retry_delay == dt.timedelta(seconds=300)
    assert score.application.endswith("scoring/deploy/spark_submit.py") and Path(score.application).is_file()
    assert score.packages.startswith("io.delta:delta-spark_")
    assert score.conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert score._conn_id == "spark_default"
    args = score.application_args
    assert args[0] == str(conf_dir.resolve() / "nightly.yaml")
    assert not any("try_number" in arg for arg in args)  # every try of a DAG run is the same scoring run
    assert args[args.index("--summary-json") + 1].endswith("/scoring__nightly/{{ run_id }}/summary.json")
    assert all(dag.get_task(t).retries == 0 for t in dag.task_ids if t != "score")

    # What spark-submit gets, rendered as a worker renders it.
    score.render_template_fields(_context())
    assert score.application_args[1:5] == [
        "--set",
        "input.where=ds = '2026-11-02'",
        "--set",
        f"run_id=scoring__nightly__{RUN_ID}",
    ]
    assert score.application_args[6] == str(
        airflow_home / "scoring-runs" / "scoring__nightly" / RUN_ID / "summary.json"
    )


def test_a_rescore_tag_makes_the_dag_run_a_new_scoring_run(conf_dir):
    from scoring.deploy.scheduling import scoring_run_id

    shutil.copy(ROOT / "conf" / "jobs" / "nightly.yaml", conf_dir)
    score = _dagbag().dags["scoring__nightly"].get_task("score")
    score.render_template_fields(_context(rescore="model-v4"))
    rendered = score.application_args[4]
    assert rendered == f"run_id=scoring__nightly__{RUN_ID}__rescore-model-v4"
    assert rendered == f"run_id={scoring_run_id('scoring__nightly', RUN_ID, 'model-v4')}"  # what publish looks for


def test_the_score_task_refuses_to_render_without_the_sensors_partition(conf_dir):
    from jinja2 import UndefinedError

    shutil.copy(ROOT / "conf" / "jobs" / "nightly.yaml", conf_dir)
    score = _dagbag().dags["scoring__nightly"].get_task("score")
    with pytest.raises(UndefinedError):  # never the whole table by accident
        score.render_template_fields(_context(found=None))


def test_a_backfill_gets_one_run_per_day_each_scoring_its_own_partition(conf_dir):
    from airflow.serialization.serialized_objects import DagSerialization

    shutil.copy(ROOT / "conf" / "jobs" / "nightly.yaml", conf_dir)
    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(_dagbag().dags["scoring__nightly"]))
    infos = list(
        dag.iter_dagrun_infos_between(_midnight(DAYS[0]), _midnight(DAYS[-1]))  # what `airflow backfill create` runs
    )
    assert [info.data_interval.start.date().isoformat() for info in infos] == list(DAYS)
    assert all(info.data_interval.end - info.data_interval.start == dt.timedelta(days=1) for info in infos)


def test_a_kubernetes_job_gets_a_spark_application_rendered_per_run(conf_dir, monkeypatch):
    import inspect

    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

    from scoring.deploy import kubernetes

    tree = yaml.safe_load((ROOT / "conf" / "jobs" / "nightly.yaml").read_text())
    tree["schedule"] |= {"deploy": "kubernetes", "namespace": "scoring"}
    tree["runtime"] = {"backend": "triton", "triton": {"url": "127.0.0.1:8001"}}
    _write(conf_dir, "nightly_k8s", tree)
    score = _dagbag().dags["scoring__nightly_k8s"].get_task("score")
    assert isinstance(score, SparkKubernetesOperator) and type(score).__name__ == "ScoringSparkKubernetesOperator"
    assert score.namespace == "scoring" and score.retries == 2
    # the failure decision hooks into the operator's own cleanup (where it raises for a failed driver pod)
    assert inspect.signature(type(score).cleanup).parameters.keys() == (
        inspect.signature(SparkKubernetesOperator.cleanup).parameters.keys()
    )

    # No cluster here: render the templates the way a worker does, with the values a run would have; the alias
    # resolves (once, when the try starts) to version 4.
    resolved = []
    monkeypatch.setattr(kubernetes, "resolve_alias", lambda name, alias, **_: resolved.append(alias) or "4")
    score.render_template_fields(_context())
    manifests = score.render_manifests()
    assert resolved == ["champion"]
    spec = score.template_spec["spec"]
    assert spec["arguments"] == [
        "/etc/scoring/jobs/nightly_k8s.yaml",
        "--set",
        "input.where=ds = '2026-11-02'",
        "--set",
        f"run_id=scoring__nightly_k8s__{RUN_ID}",
        "--set",
        "model.uri=models:/churn/4",
        "--set",
        "runtime.triton.launch=external",
        "--set",
        "runtime.triton.url=127.0.0.1:8001",
    ]
    assert not [key for key in spec["sparkConf"] if "template" in key.lower()]
    sidecars = {c["name"]: c for c in spec["executor"]["template"]["spec"]["initContainers"]}
    assert sidecars["export-model"]["command"] == ["scoring", "export", "models:/churn/4"]
    assert sidecars["tritonserver"]["restartPolicy"] == "Always"
    # exactly what `scoring render k8s` renders for the same config, overrides and version
    job = _scheduled_job_at(conf_dir / "nightly_k8s.yaml")
    same = kubernetes.render(job.config, job.path, overrides=list(score.run_overrides), model=manifests.model)
    assert same.application == manifests.application and same.config_map == manifests.config_map
    assert manifests.config_map["metadata"] == {
        "name": f"{manifests.name}-job",  # scoring-nightly-k8s-<hash>: the job name has a _
        "namespace": "scoring",
        "labels": manifests.application["metadata"]["labels"],
    }
    assert score.template_body["spark"]["kind"] == "SparkApplication"

    # A try: the ConfigMap is applied, then the operator submits the SparkApplication rendered for this try.
    from tests.unit.test_kubernetes import _ConfigMaps

    submitted = {}
    monkeypatch.setattr(SparkKubernetesOperator, "execute", lambda self, context: submitted.update(self.template_body))
    monkeypatch.setattr("scoring.deploy.scheduling.committed_summary", lambda config, run_id, summary=None: {"run_id": run_id})
    api = score.__dict__["client"] = _ConfigMaps()  # the operator's cached CoreV1Api
    assert score.execute(_context()) == {"run_id": f"scoring__nightly_k8s__{RUN_ID}"}
    assert api.calls[-1] == ("create", f"{manifests.name}-job", "scoring")
    assert submitted["spark"]["spec"]["arguments"][6] == "model.uri=models:/churn/4"
    assert resolved == ["champion", "champion"]  # once per try


def _scheduled_job_at(path):
    from scoring.deploy import scheduling

    (job,) = [job for job in scheduling.scheduled_jobs(path.parent) if job.path == path.resolve()]
    return job


def test_the_sensor_reads_the_days_partition_from_the_delta_log(lake, tmp_path):
    import pyarrow as pa

    from scoring import build_job_config
    from scoring.deploy.scheduling import check_input
    from scoring.errors import ScoringError
    from scoring.tools import demo

    def job(table, column="ds"):
        schedule = {"start_date": DAYS[0], "partition_column": column}
        return build_job_config(lake.job("unused", input={"table": str(table)}, schedule=schedule))

    found = check_input(job(lake.input_table), DAYS[1])
    assert found.ready and found.where == f"ds = '{DAYS[1]}'" and found.rows == 1000 and found.input_version == 0
    assert not check_input(job(lake.input_table), "2026-11-04").ready  # not landed yet
    assert not check_input(job(tmp_path / "absent"), DAYS[0]).ready  # no table yet
    with pytest.raises(ScoringError, match="no data interval day"):
        check_input(job(lake.input_table), "None")  # a run without a logical date

    dated = lake.table.set_column(
        1, "ds", pa.array([dt.date.fromisoformat(d) for d in lake.table.column("ds").to_pylist()])
    )
    demo.write_delta(tmp_path / "dated", dated)  # a date-typed partition column
    assert check_input(job(tmp_path / "dated"), DAYS[2]).rows == 1000
    demo.write_delta(tmp_path / "flat", lake.table, partition_by=())  # ds is a plain column: a scan, first row only
    flat = check_input(job(tmp_path / "flat"), DAYS[0])
    assert flat.ready and flat.where == f"ds = '{DAYS[0]}'"
    assert not check_input(job(tmp_path / "flat"), "2026-11-04").ready
    whole = check_input(job(lake.input_table, column="day"), DAYS[0])  # no such column: the whole table, any version
    assert whole.ready and whole.where is None and whole.input_version == 0


@pytest.mark.spark_submit
def test_a_run_scores_its_day_once_and_the_same_dag_run_again_returns_what_it_committed(
    conf_dir, lake, spark, capfd, caplog
):
    from scoring.adapters import deltalog
    from scoring.config import load_job_config
    from scoring.deploy import scheduling

    expectations = [
        {"type": "not_null", "column": "f00"},
        {"type": "between", "column": "f01", "min": -10, "max": 10},
    ]
    config_path = _write(conf_dir, "dag_e2e", _scheduled_job(lake, "dag_e2e", input_expectations=expectations))
    dag = _dagbag().dags["scoring__dag_e2e"]
    output, runs = lake.root / "dag_e2e", lake.root / "dag_e2e_runs"
    day = DAYS[1]
    run_after = _logical_date_for(day) + dt.timedelta(hours=1)  # fixed: the same Airflow run id twice

    first = dag.test(logical_date=_logical_date_for(day), run_after=run_after)
    assert str(first.state) == "success", _states(first)
    assert set(_states(first).values()) == {"success"}
    assert first.data_interval_start.date().isoformat() == day
    written = read_delta(output)
    assert written.num_rows == lake.table.num_rows // len(DAYS)
    assert set(written.column("ds").to_pylist()) == {day}
    run_id = f"scoring__dag_e2e__{first.run_id}"
    assert set(written.column("scoring_run_id").to_pylist()) == {run_id}
    rows = read_delta(runs).to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["dag_id"] == "scoring__dag_e2e" and row["run_id"] == run_id
    assert row["data_interval"] == dt.date.fromisoformat(day) and row["committed"] is True
    assert row["rows_read"] == row["rows_written"] == written.num_rows
    assert row["rows_rejected"] == row["rows_quarantined"] == 0
    assert row["model_name"] == "onnx_clf" and row["model_uri"] == f"models:/onnx_clf/{row['model_version']}"
    assert row["input_version"] == delta_version(lake.input_table) and row["output_version"] == delta_version(output)
    quality = json.loads(row["quality"])  # the gates ran inside the job: their reports came back in its summary
    assert quality["input"]["success"] and len(quality["input"]["results"]) == 2
    assert quality["output"]["success"] and len(quality["output"]["results"]) == 1
    summary = first.get_task_instance("publish").xcom_pull(task_ids="publish")
    assert summary["run_id"] == run_id and summary["committed"]
    report = first.get_task_instance("input_gate_report").xcom_pull(task_ids="input_gate_report")
    assert report["status"] == "passed" and len(report["report"]["results"]) == 2
    log = _log(capfd, caplog)
    assert "input gate passed (policy fail): 1,000 rows checked, 0 quarantined" in log
    assert "  ok   between(" in log and "output gate passed" in log

    # Without the job's summary (a Kubernetes driver), the run is read from its commit of the output table.
    rebuilt = scheduling.committed_summary(load_job_config(config_path), run_id)
    for key in ("run_id", "model_uri", "input_version", "output_version", "rows_read", "rows_written", "committed"):
        assert rebuilt[key] == summary[key], key
    assert rebuilt["quality"]["input"]["success"] and rebuilt["quality"]["output"]["success"]

    # The same DAG run again (a cleared DAG run, a backfill that reprocesses it: same Airflow run id, same scoring
    # run id): the job finds its commit and scores nothing again; publish appends nothing.
    version = delta_version(output)
    again = dag.test(logical_date=_logical_date_for(day), run_after=run_after)
    assert again.run_id == first.run_id
    assert str(again.state) == "success", _states(again)
    assert delta_version(output) == version
    assert set(read_delta(output).column("scoring_run_id").to_pylist()) == {run_id}
    assert read_delta(runs).num_rows == 1
    returned = again.get_task_instance("publish").xcom_pull(task_ids="publish")
    assert returned["run_id"] == run_id and returned["output_version"] == version
    assert deltalog.count_where(str(runs), "run_id", run_id) == 1

    # A new DAG run of the same interval is a new scoring run: it scores the day again and replaces its rows.
    second = dag.test(logical_date=_logical_date_for(day))
    assert str(second.state) == "success", _states(second)
    rewritten = read_delta(output)
    assert rewritten.num_rows == written.num_rows
    assert set(rewritten.column("ds").to_pylist()) == {day}
    assert set(rewritten.column("scoring_run_id").to_pylist()) == {f"scoring__dag_e2e__{second.run_id}"}
    assert read_delta(runs).num_rows == 2


@pytest.mark.spark_submit
def test_a_day_failing_the_input_gate_fails_score_without_retry_and_its_report_shows_why(
    conf_dir, lake, spark, capfd, caplog
):
    from scoring.tools import demo

    impossible = [{"type": "between", "column": "f01", "min": -100, "max": -99}]
    _write(conf_dir, "dag_gated", _scheduled_job(lake, "dag_gated", input_expectations=impossible, retries=1))
    dag = _dagbag().dags["scoring__dag_gated"]
    output = lake.root / "dag_gated"
    demo.write_delta(output, lake.table.slice(0, 10))  # an output table with earlier rows, to be left alone

    run = dag.test(logical_date=_logical_date_for(DAYS[0]))
    assert str(run.state) == "failed"
    assert _states(run) == {
        "wait_for_input": "success",
        "score": "failed",
        "input_gate_report": "failed",
        "output_gate_report": "skipped",
        "publish": "upstream_failed",
    }
    assert _tries(run, "score") == 1  # terminal: the retry it had was not used
    record = run.get_task_instance("score").xcom_pull(task_ids="score", key="scoring_error")
    assert record["error"]["type"] == "QualityError" and record["error"]["exit_code"] == 1
    assert record["error"]["transient"] is False
    log = _log(capfd, caplog)
    assert "input gate FAILED: QualityError: input gate failed on" in log and "between(column=f01" in log
    assert "the output gate did not run: the input gate failed first" in log
    assert delta_version(output) == 0 and read_delta(output).num_rows == 10
    assert delta_version(lake.root / "dag_gated_runs") is None


@pytest.mark.spark_submit
def test_an_unknown_model_alias_fails_score_at_once_and_shows_the_scoring_error(conf_dir, lake, capfd, caplog):
    tree = _scheduled_job(lake, "dag_no_model", model="models:/no_such_model@champion", retries=2)
    _write(conf_dir, "dag_no_model", tree)
    dag = _dagbag().dags["scoring__dag_no_model"]

    run = dag.test(logical_date=_logical_date_for(DAYS[2]))
    assert str(run.state) == "failed"
    states = _states(run)
    assert states["score"] == "failed" and states["publish"] == "upstream_failed"
    assert states["input_gate_report"] == states["output_gate_report"] == "skipped"  # no gate ran
    assert _tries(run, "score") == 1  # no retry of an unknown alias
    record = run.get_task_instance("score").xcom_pull(task_ids="score", key="scoring_error")
    assert record["error"]["type"] == "ModelError" and record["error"]["exit_code"] == 1
    log = _log(capfd, caplog)
    assert "scoring error: cannot resolve models:/no_such_model@champion" in log
    assert "scoring failed (exit code 1, not transient: no retry" in log
    assert delta_version(lake.root / "dag_no_model") is None


@pytest.mark.spark_submit
def test_a_transient_failure_is_retried_with_the_same_run_id_and_fails_when_retries_run_out(
    conf_dir, lake, capfd, caplog
):
    """No Triton server listens on the job's url: the job exits 75 (BackendUnavailableError) and Airflow retries."""
    triton = {"url": f"127.0.0.1:{_closed_port()}", "timeout_s": 1, "max_retries": 0}
    tree = _scheduled_job(lake, "dag_transient", retries=1, runtime={"backend": "triton", "triton": triton})
    _write(conf_dir, "dag_transient", tree)
    dag = _dagbag().dags["scoring__dag_transient"]

    run = dag.test(logical_date=_logical_date_for(DAYS[0]))
    assert str(run.state) == "failed"
    assert _states(run)["score"] == "failed" and _states(run)["publish"] == "upstream_failed"
    assert _tries(run, "score") == 2  # the first try, then its one retry
    record = run.get_task_instance("score").xcom_pull(task_ids="score", key="scoring_error")
    assert record["error"]["type"] == "BackendUnavailableError"
    assert record["error"]["exit_code"] == 75 and record["error"]["transient"] is True
    log = _log(capfd, caplog)
    assert log.count("transient: Airflow retries it, with the same scoring run id") == 2
    assert set(re.findall(r"--set run_id=(\S+)", log)) == {f"scoring__dag_transient__{run.run_id}"}  # both tries
    assert delta_version(lake.root / "dag_transient") is None


@pytest.mark.spark_submit
def test_a_backfill_in_any_order_writes_exactly_one_partition_per_day(conf_dir, lake, spark):
    """The DAG runs a backfill creates, executed out of order: each day's partition is written once, by its own run."""
    import pyarrow.compute as pc

    _write(conf_dir, "dag_backfill", _scheduled_job(lake, "dag_backfill"))
    dag = _dagbag().dags["scoring__dag_backfill"]
    output = lake.root / "dag_backfill"
    run_ids = {}
    for day in (DAYS[2], DAYS[0], DAYS[1]):
        dag_run = dag.test(logical_date=_logical_date_for(day))
        assert str(dag_run.state) == "success", _states(dag_run)
        run_ids[day] = f"scoring__dag_backfill__{dag_run.run_id}"
    written = read_delta(output)
    assert written.num_rows == lake.table.num_rows
    assert len(set(written.column("customer_id").to_pylist())) == written.num_rows  # no duplicates
    for day in DAYS:
        rows = written.filter(pc.equal(written.column("ds"), day))
        assert rows.num_rows == lake.table.num_rows // len(DAYS)
        assert set(rows.column("scoring_run_id").to_pylist()) == {run_ids[day]}
    assert read_delta(lake.root / "dag_backfill_runs").num_rows == len(DAYS)
