"""`scoring cluster up|status|sets|down`, each a separate process, on a real two-worker cluster (no sidecars)."""

from __future__ import annotations

import json
import subprocess
import sys

from scoring.deploy.cluster import Cluster


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoring.cli", "cluster", *args], capture_output=True, text=True, timeout=120
    )


def test_the_cluster_commands_bring_a_cluster_up_show_it_and_bring_it_down_from_separate_processes(tmp_path):
    from scoring.deploy.cluster import _started

    folder = str(tmp_path / "cli-cluster")
    up = _cli("up", "--workers", "2", "--state-dir", folder)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        status = _cli("status", "--state-dir", folder)
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert [w["alive"] for w in shown["workers"]] == [True, True]
        assert [w["triton"] for w in shown["workers"]] == [None, None]
        sets = _cli("sets", "--state-dir", folder).stdout.split()
        assert sets[:2] == ["--set", f"spark.master={shown['master']}"]
        assert json.loads(sets[3].split("=", 1)[1])["spark.pyspark.python"] == sys.executable
        pids = {pid: _started(pid) for pid in Cluster(folder).alive_processes()}
        assert {shown["master_pid"], *(w["pid"] for w in shown["workers"])} <= set(pids)
    finally:
        down = _cli("down", "--state-dir", folder)
    assert down.returncode == 0, down.stderr
    assert [pid for pid, started in pids.items() if _started(pid) == started] == []
    assert _cli("status", "--state-dir", folder).returncode == 1
