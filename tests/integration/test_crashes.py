"""Crashes and races with real processes: a driver killed between its writes, a Python worker killed mid-job, two
drivers committing into the same output at once. Each run is a real `scoring run` process; tables are read back with
delta-rs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import yaml

from scoring import columns
from scoring.errors import EXIT_TRANSIENT
from scoring.tools import demo
from tests.integration.conftest import delta_version, read_delta

KEY = "customer_id"


@pytest.fixture(scope="module")
def dirty_input(lake, tmp_path_factory):
    """600 rows, 6 of them with an infinite feature (set aside with input.on_invalid_rows: skip)."""
    root = tmp_path_factory.mktemp("crash")
    table = lake.table.slice(0, 600)
    f03 = table.column("f03").to_numpy().copy()
    bad_rows = [3, 50, 120, 333, 401, 599]
    f03[bad_rows] = np.inf
    demo.write_delta(root / "input", table.set_column(table.schema.get_field_index("f03"), "f03", pa.array(f03)))
    bad = {table.column(KEY)[i].as_py() for i in bad_rows}
    return root, str(root / "input"), bad


def _config(lake, path, input_table: str, output: str, **extra) -> str:
    tree = lake.job(output, input={"table": input_table, "on_invalid_rows": "skip"}, **extra)
    tree["output"]["table"] = output
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _scoring(*args: str, fault: str | None = None, marker: str | None = None, timeout: int = 300):
    env = dict(os.environ)
    env.pop("SCORING_FAULT", None)
    if fault:
        env["SCORING_FAULT"] = fault
    if marker:
        env["SCORING_FAULT_MARKER"] = marker
    return subprocess.run(
        [sys.executable, "-m", "scoring.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _quarantine_keys(path) -> list:
    return read_delta(path).column(KEY).to_pylist()


@pytest.mark.parametrize("point", ["before-output-commit", "after-output-commit", "after-quarantine-commit"])
def test_a_driver_killed_between_its_writes_leaves_each_set_aside_row_exactly_once_after_a_retry(
    lake, dirty_input, tmp_path, point
):
    root, input_table, bad = dirty_input
    output = str(tmp_path / "out")
    config = _config(lake, tmp_path / "job.yaml", input_table, output)
    run_id = f"crash-{point}"
    killed = _scoring("run", config, "--set", f"run_id={run_id}", fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    committed = point != "before-output-commit"
    assert (delta_version(output) is not None) == committed
    quarantine = output + "_quarantine"
    if point == "after-quarantine-commit":
        assert sorted(_quarantine_keys(quarantine)) == sorted(bad)
    else:
        # nothing from an attempt whose output never committed, and nothing yet from one that died right after
        assert delta_version(quarantine) is None
    version = delta_version(output)

    retry = _scoring("run", config, "--set", f"run_id={run_id}", "--json")
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert sorted(_quarantine_keys(quarantine)) == sorted(bad), "each set-aside row exactly once"
    assert set(read_delta(quarantine).column(columns.SCORING_RUN_ID).to_pylist()) == {run_id}
    out = read_delta(output)
    assert out.num_rows == 600 - len(bad) and not (set(out.column(KEY).to_pylist()) & bad)
    assert set(out.column(columns.SCORING_RUN_ID).to_pylist()) == {run_id}
    if committed:
        assert delta_version(output) == version, "the retry must not commit the output again"


def test_a_killed_python_worker_is_retried_and_the_run_commits_every_row(lake, tmp_path):
    output = str(tmp_path / "out")
    config = _config(lake, tmp_path / "job.yaml", lake.input_table, output)
    marker = tmp_path / "killed-once"
    result = _scoring("run", config, "--set", "spark.master=local[2]", fault="kill-python-worker", marker=str(marker))
    assert marker.exists(), "the fault hook must have killed a worker"
    assert result.returncode == 0, result.stderr[-3000:]
    out = read_delta(output)
    assert out.num_rows == lake.table.num_rows
    assert sorted(out.column(KEY).to_pylist()) == sorted(lake.table.column(KEY).to_pylist())


def test_two_drivers_racing_into_the_same_output_end_clean_and_the_table_stays_consistent(lake, tmp_path):
    """Two first runs creating the table, then two re-runs of the same partition: every loser exits 75 with a
    scoring error naming the conflict; the table always holds exactly one row per (key, partition)."""
    output = str(tmp_path / "out")
    config = _config(lake, tmp_path / "job.yaml", lake.input_table, output)
    for round_ in ("create", "rerun"):
        extra = [] if round_ == "create" else ["--set", "input.where=ds = '2026-11-02'"]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "scoring.cli", "run", config, *extra],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes in ([0, 0], [0, EXIT_TRANSIENT]), results
        for code, stderr in results:
            if code == EXIT_TRANSIENT:
                assert "another writer committed" in stderr and "Traceback" not in stderr
        out = read_delta(output)
        pairs = list(zip(out.column(KEY).to_pylist(), out.column("ds").to_pylist(), strict=True))
        assert len(pairs) == len(set(pairs)) == lake.table.num_rows
