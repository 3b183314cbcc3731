"""A stream's driver killed at every moment that matters, then restarted from its checkpoint: every input row ends up
in the output exactly once, every set-aside row in the quarantine table exactly once. Each run is a real `scoring
stream` process; tables are read back with delta-rs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from scoring.tools import demo
from tests.integration.conftest import delta_version, make_table, read_delta

KEY = "customer_id"
CHUNKS = 5
ROWS = 80


@pytest.fixture
def source(tmp_path):
    """CHUNKS appends of ROWS rows (one file, one version each), two rows per chunk with an infinite feature."""
    path = tmp_path / "src"
    bad = set()
    for i in range(CHUNKS):
        table = make_table(ROWS, seed=40 + i)
        keys = np.arange(i * 1000, i * 1000 + ROWS, dtype=np.int64)
        f01 = table.column("f01").to_numpy().copy()
        f01[[3, 60]] = np.inf
        bad |= {int(keys[3]), int(keys[60])}
        table = table.set_column(table.schema.get_field_index(KEY), KEY, pa.array(keys))
        table = table.set_column(table.schema.get_field_index("f01"), "f01", pa.array(f01))
        demo.write_delta(path, table, mode="append", partition_by=())
    good = {k for i in range(CHUNKS) for k in range(i * 1000, i * 1000 + ROWS)} - bad
    return str(path), good, bad


def _config(lake, tmp_path: Path, source: str, **stream) -> str:
    tree = lake.job("unused", input={"table": source, "on_invalid_rows": "skip"})
    tree["output"] = {"table": str(tmp_path / "out")}
    tree["stream"] = {"checkpoint": str(tmp_path / "ck"), "max_files_per_trigger": 1, **stream}
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def _env(fault: str | None = None, batch: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORING_FAULT")}
    if fault:
        env["SCORING_FAULT"] = fault
        env["SCORING_FAULT_BATCH"] = str(batch)
    return env


def _stream(config: str, *args: str, fault: str | None = None, batch: int | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", "scoring.cli", "stream", config, *args],
        env=_env(fault, batch),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _keys(path: str) -> list[int]:
    return read_delta(path).column(KEY).to_pylist() if delta_version(path) is not None else []


def _committed_batches(tmp_path: Path) -> set[int]:
    commits = tmp_path / "ck" / "commits"
    return {int(p.name) for p in commits.iterdir() if p.name.isdigit()} if commits.exists() else set()


def test_a_driver_killed_at_each_commit_point_and_restarted_loses_and_repeats_nothing(lake, source, tmp_path):
    path, good, bad = source
    config = _config(lake, tmp_path, path)
    output, quarantine = str(tmp_path / "out"), str(tmp_path / "out_quarantine")
    batch_keys = [{k for k in good if i * 1000 <= k < i * 1000 + ROWS} for i in range(CHUNKS)]

    # 1. killed after micro-batch 1's output commit, before the checkpoint (or the quarantine) knows it
    killed = _stream(config, "--available-now", fault="stream-after-output-commit", batch=1)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(_keys(output)) == sorted(batch_keys[0] | batch_keys[1])
    assert 1 not in _committed_batches(tmp_path)
    assert sorted(_keys(quarantine)) == sorted(k for k in bad if k < 1000)

    # 2. restarted, then killed after micro-batch 2's quarantine commit: batch 1 replays (its output write is skipped,
    #    its quarantine rows are written once)
    killed = _stream(config, "--available-now", fault="stream-after-quarantine-commit", batch=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(_keys(output)) == sorted(batch_keys[0] | batch_keys[1] | batch_keys[2])
    assert sorted(_keys(quarantine)) == sorted(k for k in bad if k < 3000)

    # 3. restarted, then killed before micro-batch 3's output commit: nothing of it lands
    killed = _stream(config, "--available-now", fault="stream-before-output-commit", batch=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(_keys(output)) == sorted(batch_keys[0] | batch_keys[1] | batch_keys[2])

    # 4. restarted without a fault: it drains; every row exactly once
    done = _stream(config, "--available-now", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    keys = _keys(output)
    assert len(keys) == len(set(keys)) and set(keys) == good
    quarantined = _keys(quarantine)
    assert len(quarantined) == len(set(quarantined)) and set(quarantined) == bad


def test_sigterm_stops_after_the_batch_in_progress_and_sigkill_mid_stream_loses_nothing(lake, source, tmp_path):
    path, good, bad = source
    config = _config(lake, tmp_path, path, interval_s=0.5)
    output = str(tmp_path / "out")

    def running(sig: int) -> subprocess.CompletedProcess:
        process = subprocess.Popen(
            [sys.executable, "-m", "scoring.cli", "stream", config],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        start = delta_version(output)
        deadline = time.monotonic() + 240
        while delta_version(output) == start and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    stopped = running(signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "stopped on request" in stopped.stdout
    assert "Traceback" not in stopped.stderr
    assert _committed_batches(tmp_path)  # the checkpoint recorded what the output holds

    killed = running(signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL

    done = _stream(config, "--available-now")
    assert done.returncode == 0, done.stderr[-3000:]
    keys = _keys(output)
    assert len(keys) == len(set(keys)) and set(keys) == good


def test_spark_submit_runs_the_stream_and_prints_its_summary(lake, source, tmp_path):
    import json

    from scoring.adapters.spark import spark_submit_command, spark_submit_env

    path, good, _bad = source
    config = _config(lake, tmp_path, path, max_files_per_trigger=10)
    summary = tmp_path / "summary.json"
    command = spark_submit_command(config, [], "local[2]", stream=True, available_now=True)
    done = subprocess.run(
        [*command, "--summary-json", str(summary)],
        env={**spark_submit_env(), **_env()},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(summary.read_text())
    assert record["stopped"] == "drained" and record["rows_written"] == len(good)
    keys = _keys(str(tmp_path / "out"))
    assert len(keys) == len(set(keys)) and set(keys) == good
