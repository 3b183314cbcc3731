"""notebooks/backfill.ipynb end to end: executed by papermill in a real Jupyter kernel (which starts its own Spark),
against a generated lake and a real MLflow registry; the output table is read back with delta-rs.

The notebook runs a few times in sequence on one output table: a dry run, the backfill, the same backfill again, a
forced dry run, and a forced backfill in which one day fails. Only the two backfills that score start Spark (in the
kernel): that is most of the file's time.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from mlflow import MlflowClient

from scoring import columns
from tests.integration.conftest import DAYS, delta_version, read_delta

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "backfill.ipynb"
START, END = "2026-11-01", "2026-11-04"  # 2026-11-04 has no input rows

pytestmark = [
    # jupyter_client / nbclient (papermill's kernel plumbing) deprecations, not ours
    pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_client.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:nbclient.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:zmq.*"),
]


@dataclasses.dataclass
class Execution:
    """One papermill run of the notebook: what it saved, and the output table's version after it."""

    directory: Path
    version_before: int | None
    version_after: int | None
    table: pa.Table | None
    """The output table right after this run, read with delta-rs."""
    commits: list[dict]
    """The ``userMetadata`` of every commit of the output table right after this run, newest first."""
    error: str | None = None
    """``ename: evalue`` of the cell that raised, if one did."""

    def json(self, name: str) -> list[dict]:
        return json.loads((self.directory / name).read_text())

    def statuses(self, name: str = "backfill_summary.json", key: str = "status") -> dict[str, str]:
        return {row["ds"]: row[key] for row in self.json(name)}

    @property
    def notebook_text(self) -> str:
        return (self.directory / "executed.ipynb").read_text()


@dataclasses.dataclass
class Backfill:
    champion: str
    """The version models:/onnx_clf@champion resolved to when the backfill ran."""
    dry_run: Execution
    first: Execution
    second: Execution
    forced_dry_run: Execution
    failing: Execution
    """Forced, with a filter that leaves 2026-11-02 nothing to score: that day fails, the others are scored."""


def _execute(job_config: Path, output_table: Path, directory: Path, **parameters) -> Execution:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    directory.mkdir(parents=True)
    before = delta_version(output_table)
    error = None
    try:
        papermill.execute_notebook(
            str(NOTEBOOK),
            str(directory / "executed.ipynb"),
            parameters={
                "job_config": str(job_config),
                "start_date": START,
                "end_date": END,
                "output_dir": str(directory),
                **parameters,
            },
            kernel_name="python3",
            cwd=str(ROOT),
            progress_bar=False,
        )
    except PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue}"
    after = delta_version(output_table)
    if after is None:
        return Execution(directory, before, after, None, [], error)
    from deltalake import DeltaTable

    commits = [json.loads(c["userMetadata"]) for c in DeltaTable(str(output_table)).history()]
    return Execution(directory, before, after, read_delta(output_table), commits, error)


@pytest.fixture(scope="module")
def backfill(lake, tmp_path_factory) -> Backfill:
    root = tmp_path_factory.mktemp("backfill")
    output_table = root / "scores"
    job_config = root / "job.yaml"
    job_config.write_text(
        yaml.safe_dump(
            {
                "name": "backfill-test",
                "input": {"table": lake.input_table, "key": "customer_id"},
                "model": {"uri": "models:/onnx_clf@champion"},
                "output": {"table": str(output_table), "partition_by": ["ds"]},
                "spark": {"master": "local[2]", "conf": {"spark.sql.shuffle.partitions": "1"}},
            }
        )
    )
    champion = MlflowClient().get_model_version_by_alias("onnx_clf", "champion").version
    return Backfill(
        champion=str(champion),
        dry_run=_execute(job_config, output_table, root / "dry_run", dry_run=True),
        first=_execute(job_config, output_table, root / "first"),
        second=_execute(job_config, output_table, root / "second"),
        forced_dry_run=_execute(job_config, output_table, root / "forced_dry_run", dry_run=True, force=True),
        failing=_execute(
            job_config, output_table, root / "failing", force=True, overrides=["input.where=ds <> '2026-11-02'"]
        ),
    )


def _rows_per_day(table: pa.Table) -> dict[str, int]:
    return {day: table.filter(pc.equal(table.column("ds"), day)).num_rows for day in DAYS}


def test_the_notebook_runs_clean_when_no_day_fails(backfill):
    for run in (backfill.dry_run, backfill.first, backfill.second, backfill.forced_dry_run):
        assert run.error is None, run.error


def test_a_dry_run_plans_every_day_and_writes_nothing(backfill, lake):
    run = backfill.dry_run
    assert run.version_before is None and run.version_after is None
    assert run.statuses("backfill_plan.json", "action") == {
        "2026-11-01": "score",
        "2026-11-02": "score",
        "2026-11-03": "score",
        "2026-11-04": "no input",
    }
    input_rows = {row["ds"]: row["input_rows"] for row in run.json("backfill_plan.json")}
    assert input_rows == {**_rows_per_day(lake.table), "2026-11-04": 0}
    assert "dry run: would score 3 of 4 day(s)" in run.notebook_text
    assert not (run.directory / "backfill_summary.json").exists()


def test_the_backfill_writes_each_day_with_input_once_with_one_model_version(backfill, lake):
    out = backfill.first.table
    assert sorted(set(out.column("ds").to_pylist())) == list(DAYS)
    assert _rows_per_day(out) == _rows_per_day(lake.table)
    keys = out.column("customer_id").to_pylist()
    assert len(keys) == len(set(keys)) == lake.table.num_rows
    assert set(out.column(columns.MODEL_VERSION).to_pylist()) == {backfill.champion}
    assert set(out.column(columns.MODEL_URI).to_pylist()) == {f"models:/onnx_clf/{backfill.champion}"}


def test_every_day_is_one_commit_of_the_pinned_version(backfill):
    commits = backfill.first.commits
    assert backfill.first.version_before is None and backfill.first.version_after == len(DAYS) - 1
    assert sorted(c["input_where"] for c in commits) == [f"ds = '{day}'" for day in DAYS]
    # the alias was resolved once, in the notebook; every day's run was handed the versioned URI
    assert {c["requested_model_uri"] for c in commits} == {f"models:/onnx_clf/{backfill.champion}"}
    assert len({c[columns.SCORING_RUN_ID] for c in commits}) == len(DAYS)


def test_the_summary_reads_back_status_rows_version_and_run_id_per_day(backfill, lake):
    summary = {row["ds"]: row for row in backfill.first.json("backfill_summary.json")}
    assert {day: row["status"] for day, row in summary.items()} == {
        "2026-11-01": "scored",
        "2026-11-02": "scored",
        "2026-11-03": "scored",
        "2026-11-04": "no input",
    }
    out = backfill.first.table
    for day in DAYS:
        rows = out.filter(pc.equal(out.column("ds"), day))
        assert summary[day]["rows"] == rows.num_rows
        assert summary[day]["model_version"] == backfill.champion
        assert [summary[day]["run_id"]] == list(set(rows.column(columns.SCORING_RUN_ID).to_pylist()))
    assert summary["2026-11-04"]["rows"] == 0 and summary["2026-11-04"]["run_id"] == ""


def test_the_score_plot_is_saved_to_output_dir(backfill):
    plot = backfill.first.directory / "backfill_scores.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "image/png" in backfill.first.notebook_text  # and displayed in the notebook


def test_a_second_backfill_skips_every_day_and_commits_nothing(backfill):
    second = backfill.second
    assert second.version_before == second.version_after == backfill.first.version_after
    assert second.statuses() == {
        "2026-11-01": "skipped",
        "2026-11-02": "skipped",
        "2026-11-03": "skipped",
        "2026-11-04": "no input",
    }
    first_runs = {row["ds"]: row["run_id"] for row in backfill.first.json("backfill_summary.json")}
    assert {row["ds"]: row["run_id"] for row in second.json("backfill_summary.json")} == first_runs


def test_a_forced_dry_run_plans_to_score_again_and_writes_nothing(backfill):
    run = backfill.forced_dry_run
    assert run.version_before == run.version_after == backfill.first.version_after
    assert run.statuses("backfill_plan.json", "action") == {
        "2026-11-01": "score",
        "2026-11-02": "score",
        "2026-11-03": "score",
        "2026-11-04": "no input",
    }


def test_a_failed_day_is_recorded_the_others_are_scored_and_the_notebook_raises_at_the_end(backfill):
    failing = backfill.failing
    summary = {row["ds"]: row for row in failing.json("backfill_summary.json")}  # saved before the raise
    assert {day: row["status"] for day, row in summary.items()} == {
        "2026-11-01": "scored",
        "2026-11-02": "failed",
        "2026-11-03": "scored",
        "2026-11-04": "no input",
    }
    assert "InputError: input: nothing to score" in summary["2026-11-02"]["message"]
    assert failing.error is not None and failing.error.startswith("BackfillError: backfill: 1 of 4 day(s) failed")
    assert "2026-11-02" in failing.error
    # the day after the failure was scored: one commit per scored day, none for the failed one
    assert failing.version_after == failing.version_before + 2
    first_runs = {row["ds"]: row["run_id"] for row in backfill.first.json("backfill_summary.json")}
    assert summary["2026-11-02"]["run_id"] == first_runs["2026-11-02"]
    assert summary["2026-11-01"]["run_id"] != first_runs["2026-11-01"]
    assert summary["2026-11-03"]["run_id"] != first_runs["2026-11-03"]
    out = failing.table
    assert out.num_rows == len(set(out.column("customer_id").to_pylist())) == 3000
