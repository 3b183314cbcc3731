"""The command line as a user runs it: real subprocesses, real exit codes, real Spark."""

from __future__ import annotations

import json
import os
import re
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


# What scoring itself writes on stderr: its log lines ("2026-11-25 19:27:00,123 INFO scoring.engine.progress: ...").
_OWN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ scoring\.")


def test_a_run_says_only_its_own_progress_by_default_and_everything_with_v(lake, tmp_path):
    """Quiet by default: no Ivy resolution report, no log4j warnings, no JVM notices, no MLflow download bars; -v shows
    what Spark and Ivy print as well as scoring's every step."""
    config = _write(tmp_path, lake.job("cli_quiet"))
    where = ["--set", "input.where=ds = '2026-11-01'"]
    quiet = _scoring("run", str(config), *where)
    assert quiet.returncode == 0, quiet.stderr
    lines = quiet.stderr.splitlines()
    assert [line for line in lines if not _OWN_LINE.match(line)] == []
    assert any("scoring.engine.progress: writing" in line for line in lines)  # the progress still shows
    assert "committed" in quiet.stdout

    loud = _scoring("-v", "run", str(config), *where)
    assert loud.returncode == 0, loud.stderr
    assert ":: resolving dependencies ::" in loud.stderr  # Ivy, resolving the Delta jars
    assert len(loud.stderr.splitlines()) > len(lines)


def test_a_spark_that_cannot_start_says_why_even_by_default(lake, tmp_path):
    """What the JVM printed while failing to start is held back only while it starts, and shown when it fails."""
    spark = {"master": "local[1]", "conf": {"spark.driver.extraJavaOptions": "-Xmx1k"}}
    done = _scoring("run", str(_write(tmp_path, lake.job("cli_no_jvm", spark=spark))))
    assert done.returncode != 0
    assert "Not allowed to specify max heap(Xmx) memory settings through java options" in done.stderr


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


def test_plan_shows_what_a_run_would_replace_and_writes_nothing(lake, tmp_path):
    config = _write(tmp_path, lake.job("cli_plan_out"))
    assert _scoring("run", str(config), "--set", "input.where=ds = '2026-11-01'").returncode == 0
    version = delta_version(lake.root / "cli_plan_out")
    planned = _scoring("plan", str(config), "--json", "--set", "input.where=customer_id < 30")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    ids = lake.table.column("customer_id").to_pylist()
    days = lake.table.column("ds").to_pylist()
    selected = [d for k, d in zip(ids, days, strict=True) if k < 30]
    in_output = [d for d in selected if d == "2026-11-01"]
    assert plan["rows_selected"] == len(selected)
    assert plan["rows_to_replace"] == len(in_output)
    assert plan["output_rows"] == 1000
    assert {p["values"]["ds"]: p["rows"] for p in plan["partitions"]} == {d: selected.count(d) for d in set(selected)}
    shown = _scoring("plan", str(config), "--set", "input.where=customer_id < 30")
    assert shown.returncode == 0 and "nothing is written" in shown.stdout and "rows selected" in shown.stdout
    assert delta_version(lake.root / "cli_plan_out") == version


def test_a_blank_filter_and_a_conflicting_output_exit_with_their_codes_and_no_traceback(lake, tmp_path):
    config = _write(tmp_path, lake.job("cli_codes_out"))
    blank = _scoring("plan", str(config), "--set", "input.where=' '")
    assert blank.returncode == 2 and "input.where" in blank.stderr and "Traceback" not in blank.stderr
    into_input = _scoring("run", str(config), "--set", f"output.table={lake.input_table}")
    assert into_input.returncode == 2 and "same table as input.table" in into_input.stderr
    assert "Traceback" not in into_input.stderr
