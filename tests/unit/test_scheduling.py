"""The scheduling decisions, without Airflow: run ids, whether a failed score try is retried, what the gate report
tasks show."""

from __future__ import annotations

import pytest

from scoring.deploy import scheduling
from scoring.errors import ConfigError

INPUT_REPORT = {
    "which": "input",
    "success": True,
    "policy": "fail",
    "rows": 1000,
    "quarantined": 0,
    "results": [
        {
            "expectation": "not_null(column=f00)",
            "column": "f00",
            "success": True,
            "element_count": 1000,
            "unexpected_count": 0,
            "sample": [],
        },
        {
            "expectation": "row_count_between(min=1)",
            "column": None,
            "success": True,
            "observed_value": 1000,
            "unexpected_count": None,
        },
    ],
}
GATE_ERROR = {
    "type": "QualityError",
    "message": "input gate failed on /lake/features@0 where ds = '2026-11-01': between(column=f01, min=-100, "
    "max=-99): 1000 of 1000 rows failed (100.00%), e.g. [0.1]",
    "hint": "fix the data, or adjust quality.input.expectations",
    "transient": False,
    "exit_code": 1,
}
MODEL_ERROR = {"type": "ModelError", "message": "cannot resolve models:/nope@champion", "hint": None, "exit_code": 1}


def test_one_dag_run_is_one_scoring_run_and_a_rescore_tag_makes_another():
    assert scheduling.scoring_run_id("scoring__nightly", "scheduled__2026-11-02T00:00:00+00:00") == (
        "scoring__nightly__scheduled__2026-11-02T00:00:00+00:00"
    )
    assert scheduling.scoring_run_id("d", "r", "") == scheduling.scoring_run_id("d", "r", None) == "d__r"
    assert scheduling.scoring_run_id("d", "r", "model-v4") == "d__r__rescore-model-v4"
    with pytest.raises(ConfigError, match="param rescore='a b'"):
        scheduling.scoring_run_id("d", "r", "a b")
    assert "try_number" not in scheduling.scoring_run_id_template("d")


@pytest.mark.parametrize(
    ("exit_code", "retried"),
    [(75, True), (1, False), (2, False), (137, False), (None, True), (-9, True)],
)
def test_only_a_transient_exit_or_a_job_that_never_exited_is_retried(exit_code, retried):
    assert scheduling.retry_can_help(exit_code) is retried


def test_a_terminal_failure_says_why_and_that_no_retry_follows():
    failure = scheduling.score_failure(1, {"error": MODEL_ERROR})
    assert not failure.retry
    assert failure.message().startswith("scoring failed (exit code 1, not transient: no retry")
    assert "ModelError: cannot resolve models:/nope@champion" in failure.message()
    assert failure.record() == {"error": {**MODEL_ERROR, "exit_code": 1, "transient": False}}


def test_a_transient_failure_is_retried_with_the_same_run_id():
    error = {"type": "BackendUnavailableError", "message": "Triton did not answer", "hint": "check it"}
    failure = scheduling.score_failure(75, {"error": error})
    assert failure.retry and "transient: Airflow retries it, with the same scoring run id" in failure.message()
    assert "\n  how to fix: check it" in failure.message()


def test_a_job_that_left_no_record_is_judged_by_its_exit_code_alone():
    assert not scheduling.score_failure(1, None).retry
    assert "left no error record" in scheduling.score_failure(1, None).message()
    assert not scheduling.score_failure(1, {"run_id": "an earlier summary"}).retry
    assert "killed by signal 9" in scheduling.score_failure(-9, None).message()
    assert scheduling.score_failure(None, None).record()["error"]["exit_code"] is None
    # an exit code the operator could not read is taken from the record the job wrote this try
    assert not scheduling.score_failure(None, {"error": MODEL_ERROR}).retry


def test_the_gate_reports_come_from_the_summary():
    summary = {"run_id": "r", "quality": {"input": INPUT_REPORT}}
    view = scheduling.gate_view("input", summary, None, expectations=2)
    assert view.status == "passed" and view.report == INPUT_REPORT
    assert view.text.splitlines() == [
        "input gate passed (policy fail): 1,000 rows checked, 0 quarantined",
        "  ok   not_null(column=f00): 0 unexpected of 1,000",
        "  ok   row_count_between(min=1): 1000",
    ]
    assert scheduling.gate_view("output", summary, None, expectations=0).status == "not configured"
    # a retry that found the run committed by an earlier try may carry no report: the commit says it passed
    assert scheduling.gate_view("output", summary, None, expectations=1).status == "passed"
    failed = {**INPUT_REPORT, "success": False, "results": [{**INPUT_REPORT["results"][0], "success": False}]}
    assert scheduling.gate_view("input", {"quality": {"input": failed}}, None, expectations=1).status == "failed"


def test_a_failed_input_gate_fails_its_report_and_the_output_gate_never_ran():
    view = scheduling.gate_view("input", None, GATE_ERROR, expectations=1)
    assert view.status == "failed"
    assert view.text.startswith("input gate FAILED: QualityError: input gate failed on /lake/features@0")
    assert "how to fix: fix the data" in view.text
    assert scheduling.gate_view("output", None, GATE_ERROR, expectations=1).status == "not run"


def test_a_failed_output_gate_means_the_input_gate_had_passed():
    error = {**GATE_ERROR, "message": "output gate failed on run r: between(column=label, min=0, max=1): ..."}
    assert scheduling.failed_gate(error) == "output"
    assert scheduling.gate_view("output", None, error, expectations=1).status == "failed"
    assert scheduling.gate_view("input", None, error, expectations=1).status == "passed"
    assert scheduling.gate_view("input", None, error, expectations=0).status == "not configured"


def test_a_gate_named_by_the_error_itself_wins_over_its_text():
    assert scheduling.failed_gate({**GATE_ERROR, "gate": "output"}) == "output"
    assert scheduling.failed_gate(MODEL_ERROR) is None
    assert scheduling.failed_gate({"type": "ModelError", "message": "input gate failed"}) is None


def test_a_failure_before_the_gates_leaves_both_reports_without_a_verdict():
    for which in ("input", "output"):
        view = scheduling.gate_view(which, None, MODEL_ERROR, expectations=1)
        assert view.status == "not run" and "ModelError: cannot resolve models:/nope@champion" in view.text
    assert scheduling.gate_view("input", None, None, expectations=1).status == "not run"


def test_a_scheduled_job_with_tables_by_name_is_refused_when_the_dags_are_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "named.yaml").write_text(
        "input: {table: lake.features, key: customer_id}\n"
        "model: {uri: 'models:/m@champion'}\n"
        "output: {table: /lake/scores, partition_by: [ds]}\n"
        "schedule: {partition_column: ds, start_date: '2026-11-01'}\n"
    )
    with pytest.raises(ConfigError) as e:
        scheduling.scheduled_jobs(tmp_path)
    assert "named.yaml: input.table name tables in Spark's catalog" in str(e.value)
    assert "DESCRIBE DETAIL" in str(e.value)


def test_the_kubernetes_side_never_imports_the_airflow_side_not_even_lazily():
    """One direction only: scheduling (the Airflow side) may use kubernetes; kubernetes and what it is made of never
    import scheduling, so the two cannot form a circle again."""
    import ast
    from pathlib import Path

    from scoring.config import k8s_names
    from scoring.deploy import k8s_env, k8s_pods, k8s_yaml, kubernetes, outcome

    for module in (kubernetes, k8s_pods, k8s_yaml, k8s_env, k8s_names, outcome):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        }
        from_deploy = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "scoring.deploy"
            for alias in node.names
        }
        assert "scoring.deploy.scheduling" not in imported and "scheduling" not in from_deploy, module.__name__


def test_retry_decisions_are_one_definition_shared_by_scheduling_and_kubernetes():
    from scoring.deploy import kubernetes, outcome

    assert scheduling.retry_can_help is outcome.retry_can_help
    assert scheduling.score_failure is outcome.score_failure and scheduling.ScoreFailure is outcome.ScoreFailure
    assert kubernetes.DriverOutcome is outcome.DriverOutcome
    assert kubernetes.driver_outcome({"status": {"containerStatuses": []}}).retry_can_help  # no exit code: retry
