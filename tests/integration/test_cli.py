"""The command line as a user runs it: real subprocesses, real exit codes, real Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import delta_version, read_delta

SCORING = [sys.executable, "-m", "scoring.cli"]


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _scoring(*args, timeout=300):
    return subprocess.run([*SCORING, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_help_explains_the_commands_and_the_config_keys():
    top = _scoring("--help")
    assert top.returncode == 0
    for command in ("run", "demo", "doctor", "bench", "submit", "show"):
        assert command in top.stdout
    run_help = _scoring("run", "--help")
    assert run_help.returncode == 0
    for key in ("input.table", "model.uri", "output.partition_by", "--set"):
        assert key in run_help.stdout


def test_run_prints_a_summary_and_json(lake, tmp_path):
    config = _write(tmp_path, lake.job("cli_out"))
    done = _scoring("run", str(config), "--json", "--set", "input.where=ds = '2026-11-01'")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rows_read"] == summary["rows_written"] == 1000
    assert summary["model_uri"].startswith("models:/onnx_clf/")
    assert read_delta(lake.root / "cli_out").num_rows == 1000


def test_a_bad_config_exits_2_naming_the_key_without_a_traceback(lake, tmp_path):
    tree = lake.job("cli_bad")
    tree["input"]["tabel"] = tree["input"].pop("table")
    done = _scoring("run", str(_write(tmp_path, tree)))
    assert done.returncode == 2
    assert "input.tabel: unknown key (did you mean 'input.table'?)" in done.stderr
    assert "input.table: required key is missing" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_failed_run_exits_1_with_the_reason_and_leaves_the_output_alone(lake, tmp_path, spark):
    from scoring import build_job_config, run

    run(build_job_config(lake.job("cli_guarded")), spark=spark)
    version = delta_version(lake.root / "cli_guarded")
    config = _write(tmp_path, lake.job("cli_guarded", input={"key": "no_such_key"}))
    done = _scoring("run", str(config))
    assert done.returncode == 1
    assert "input.key" in done.stderr and "no_such_key" in done.stderr and "how to fix" in done.stderr
    assert "Traceback" not in done.stderr
    assert delta_version(lake.root / "cli_guarded") == version


@pytest.mark.spark_submit
def test_spark_submit_runs_the_same_job(lake, tmp_path):
    config = _write(tmp_path, {**lake.job("submit_out"), "spark": {}})
    done = _scoring(
        "submit", str(config), "--master", "local[2]", "--set", "input.where=ds = '2026-11-03'", timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("SCORING_SUMMARY "))
    summary = json.loads(line.removeprefix("SCORING_SUMMARY "))
    assert summary["rows_written"] == 1000 and summary["committed"]
    assert read_delta(lake.root / "submit_out").num_rows == 1000


def test_doctor_checks_java_spark_delta_the_registry_and_triton():
    done = _scoring("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("python packages", "java", "spark + delta", "mlflow registry", "triton"):
        assert f"ok   {name}" in done.stdout


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("job", ["demo.yaml", "demo-triton.yaml"])
def test_the_demo_runs_from_an_empty_directory(tmp_path, job):
    """What `make demo` / `make demo-triton` run: lake, model and registry created from nothing, then the job."""
    done = subprocess.run(
        [*SCORING, "demo", "--rows", "20000", "--config", str(ROOT / "conf" / "jobs" / job)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},  # the demo's own registry
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "committed" in done.stdout and "churn version 1" in done.stdout
    output = "churn_scores" if job == "demo.yaml" else "churn_scores_triton"
    assert read_delta(tmp_path / ".demo" / "lake" / output).num_rows == 20000
