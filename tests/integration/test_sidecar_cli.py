"""`scoring export` and `scoring sidecar start|status|stop` as a user runs them: real processes, real Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from scoring.launchers import triton_server
from tests.integration.conftest import read_delta


def _scoring(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "scoring.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_export_then_sidecar_then_run_then_stop(lake, tmp_path):
    repo = tmp_path / "repo"
    first = _scoring("export", "models:/onnx_clf@champion", "--repository", str(repo))
    assert first.returncode == 0, first.stderr
    assert "exported" in first.stdout and (repo / "onnx_clf" / "config.pbtxt").exists()
    again = _scoring("export", "models:/onnx_clf@champion", "--repository", str(repo))
    assert again.returncode == 0 and "already exported (nothing written)" in again.stdout

    env = {"SCORING_SIDECAR_STATE": str(tmp_path / "sidecar.json")}
    started = _scoring("sidecar", "start", "--repository", str(repo), env=env)
    assert started.returncode == 0, started.stderr
    handle = triton_server.load_state(tmp_path / "sidecar.json")
    try:
        assert handle is not None and triton_server.is_alive(handle)
        assert handle.grpc_url in started.stdout
        assert _scoring("sidecar", "status", env=env).returncode == 0
        refused = _scoring("sidecar", "start", "--repository", str(repo), env=env)
        assert refused.returncode == 1 and "already running" in refused.stderr

        job = lake.job("sidecar_cli_out", runtime={"backend": "triton", "triton": {"url": handle.grpc_url}})
        config = tmp_path / "job.yaml"
        config.write_text(yaml.safe_dump(job))
        done = _scoring("run", str(config), "--json", "--set", "input.where=ds = '2026-11-02'")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rows_written"] == 1000 == read_delta(lake.root / "sidecar_cli_out").num_rows
    finally:
        stopped = _scoring("sidecar", "stop", env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not triton_server.is_alive(handle)
    assert _scoring("sidecar", "status", env=env).returncode == 1


def test_exporting_a_model_without_an_onnx_form_says_why(lake, tmp_path):
    import mlflow
    import numpy as np

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return np.zeros(len(model_input))

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Constant(), registered_model_name="constant")
    done = _scoring("export", f"models:/constant/{info.registered_model_version}", "--repository", str(tmp_path))
    assert done.returncode == 1
    assert "no ONNX form" in done.stderr and "how to fix" in done.stderr
    assert not (tmp_path / "constant").exists()
