"""``scoring bench-serve --baseline-ref``: the same load against another commit's code, in one run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from scoring.tools import bench_serve


def test_each_scenario_is_followed_by_its_twin_against_the_baseline_code():
    chosen = bench_serve.with_baseline(bench_serve.scenarios_for(["precomputed-features", "live-embedded"]), "abc123")
    assert [(s.name, s.server, s.base) for s in chosen] == [
        ("precomputed-features", "embedded", "precomputed-features"),
        ("precomputed-features@abc123", "embedded@abc123", "precomputed-features"),
        ("live-embedded", "embedded", "live-embedded"),
        ("live-embedded@abc123", "embedded@abc123", "live-embedded"),
    ]


def test_the_twin_sends_the_same_requests():
    (plain, twin) = bench_serve.with_baseline(bench_serve.scenarios_for(["precomputed-features"]), "HEAD")
    keys = np.arange(5000)
    features = [f"f{i:02d}" for i in range(20)]
    first = bench_serve.requests_for(plain, keys, features, seed=3)
    assert first == bench_serve.requests_for(twin, keys, features, seed=3)
    assert len(first) == 2000


def test_the_baseline_code_is_the_commits_and_is_imported_first(tmp_path):
    code = bench_serve.checkout("HEAD", tmp_path)
    found = subprocess.run(
        [sys.executable, "-c", "import scoring; print(scoring.__file__)"],
        cwd=code,
        env={"PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == str(code / "scoring" / "__init__.py")
