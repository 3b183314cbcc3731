"""spark_entry on an error nobody planned for: a real JVM that cannot start (a master URL Spark does not know)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_an_unexpected_error_is_one_plain_line_exit_1_and_an_error_record(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"table": str(tmp_path / "in"), "key": "id"},
                "model": {"uri": "models:/m/1", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                "output": {"table": str(tmp_path / "out")},
                "spark": {"master": "nonsense://nowhere"},
            }
        )
    )
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k not in ("SCORING_DEBUG", "SCORING_TERMINATION_LOG")}
    done = subprocess.run(
        [sys.executable, "-m", "scoring.deploy.spark_submit", str(config), "--summary-json", str(summary)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("scoring error: unexpected PySparkRuntimeError: [JAVA_GATEWAY_EXITED]"), last
    assert last.endswith("(run again with --debug or SCORING_DEBUG=1 for the traceback)")
    assert "Traceback (most recent call last)" not in done.stderr  # no Python traceback of ours
    error = json.loads(summary.read_text())["error"]
    assert error["type"] == "PySparkRuntimeError" and error["message"].startswith("[JAVA_GATEWAY_EXITED]")
    assert error["exit_code"] == 1 and error["transient"] is False and "--debug" in error["hint"]
