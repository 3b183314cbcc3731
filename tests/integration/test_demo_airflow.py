"""`make demo-airflow`, for real: the target runs in a copy of the project (its Makefile, conf/ and dags/) with nothing
set in the environment, as from a fresh clone; the runs table it publishes is read back with delta-rs.

Only the venv setup step is skipped (``make -o setup``, with ``VENV`` pointing at this checkout's venv), and the demo
lake is smaller (``DEMO_ROWS``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import read_delta

ROOT = Path(__file__).resolve().parents[2]
ROWS = 5000
DAYS_IN_DEMO = 5  # scoring.tools.demo.make_features spreads the rows over 5 days from 2026-11-01


@pytest.mark.spark_submit
def test_make_demo_airflow_runs_the_nightly_dag_for_one_day_and_publishes_the_run(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Makefile", project)
    for folder in ("conf", "dags"):
        shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "SCORING_", "MLFLOW_", "SPARK_", "PYSPARK_", "_AIRFLOW"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p != str(Path(sys.executable).parent)
    )

    done = subprocess.run(
        ["make", "-o", "setup", "demo-airflow", f"VENV={Path(sys.executable).parent.parent}", f"DEMO_ROWS={ROWS}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]

    demo = project / ".demo"
    runs = read_delta(demo / "lake" / "churn_scores_nightly_runs").to_pylist()
    assert len(runs) == 1
    run = runs[0]
    assert run["dag_id"] == "scoring__nightly" and run["run_id"].startswith("scoring__nightly__manual__")
    assert run["data_interval"] == dt.date(2026, 11, 1)  # logical date 2026-11-02 scores the day before it
    assert run["committed"] is True and run["model_name"] == "churn"
    assert run["rows_read"] == run["rows_written"] == ROWS // DAYS_IN_DEMO
    quality = json.loads(run["quality"])
    assert quality["input"]["success"] and quality["output"]["success"]

    scores = read_delta(demo / "lake" / "churn_scores_nightly")
    assert set(scores.column("ds").to_pylist()) == {"2026-11-01"}
    assert set(scores.column("scoring_run_id").to_pylist()) == {run["run_id"]}
    assert (demo / "airflow" / "airflow.db").is_file()  # the throw-away Airflow lives under .demo/airflow

    # what the target prints last: the published run, read from the runs table
    tail = output[output.rindex("churn_scores_nightly_runs: 1 run(s) published") :]
    assert f"run_id            {run['run_id']}" in tail
    assert "quality           input gate passed, output gate passed" in tail
