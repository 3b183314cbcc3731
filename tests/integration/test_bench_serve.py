"""`scoring bench-serve` end to end at a tiny rate: a real ``scoring serve`` process (two: embedded and Triton), a real
``tritonserver``, the load generator in its own process. The figures are checked for being measured (every request
scheduled, answered and timed, by the path the scenario names), never for speed."""

from __future__ import annotations

import io
import json

import mlflow
import pytest
from rich.console import Console

from scoring.errors import ConfigError
from scoring.tools import bench_serve


@pytest.fixture
def own_registry_then_back(registry):
    """The bench sets up a registry of its own (as its command does), which moves MLflow's global tracking URI and
    experiment: put the session's back afterwards."""
    yield
    mlflow.set_tracking_uri(registry)
    mlflow.set_experiment("scoring-tests")


def test_bench_serve_measures_every_scenario(spark, tmp_path, own_registry_then_back):
    console = Console(file=io.StringIO(), width=220)
    output = tmp_path / "bench-serve-results.json"
    report = bench_serve.run_bench_serve(
        scenarios=bench_serve.scenarios_for(None, [20]),
        duration_s=1.0,
        repeat=1,
        saturation_step_s=0.5,
        saturation_max_steps=1,
        index_keys=5_000,
        rows=2_000,
        busy_retries=0,  # a run disturbed by other processes is kept as it is: a smoke test, not a measurement
        output=output,
        workdir=tmp_path / "bench",
        spark=spark,
        console=console,
    )
    assert json.loads(output.read_text())["scenarios"].keys() == set(bench_serve.SCENARIOS)
    expected = {
        "precomputed": ("precomputed", None),
        "precomputed-features": ("precomputed", None),
        "batch-100": ("precomputed", None),
        "live-embedded": ("live", "embedded"),
        "live-triton": ("live", "triton"),
    }
    for name, scenario in report["scenarios"].items():
        source, backend = expected[name]
        probe = scenario["probe"]
        assert probe["status"] == 200 and probe["source"] == source, (name, probe)
        assert probe.get("backend") == backend, (name, probe)
        assert probe["items"] == scenario["keys_per_request"], (name, probe)
        figures = scenario["rates"]["20"]
        (run,) = figures["runs"]
        assert run["scheduled"] == run["sent"] == run["completed"] == run["ok"] == 20, name
        assert run["errors"] == {}, name
        latency = run["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["p999"], name
        assert latency["p999"] <= latency["max"], name
        for p in bench_serve.PERCENTILES:
            assert figures[p] == {"median": latency[p], "min": latency[p], "max": latency[p]}, (name, p)
        # read from /proc in clock ticks (10 ms, the process's and its thread's each rounded their own way): a second
        # at 20 requests/s may read as 0, never as missing
        assert run["server_cpu_fraction"] >= 0 and run["server_loop_cpu_fraction"] >= 0, name
        assert run["other_cpu_fraction"] >= 0 and run["client_cpu_fraction"] > 0, name
        assert (run["triton_cpu_fraction"] is not None) == (name == "live-triton"), name
        saturation = scenario["saturation"]
        (step,) = saturation["steps"]
        assert step["rate"] == bench_serve.SCENARIOS[name].saturation_start, name
        assert step["p99_ms"] is not None and step["throughput_per_s"] > 0, name
        assert saturation["max_rate_held"] in (None, step["rate"]), name
    assert report["git"]["commit"] and isinstance(report["discarded_busy_runs"], list)
    memory = report["index_memory"]
    assert memory["keys"] == 5_000 and memory["build_s"] >= 0
    assert memory["retained_mb"] > 0 and memory["bytes_per_key"] > 0 and memory["record_bytes_mean"] > 0
    assert memory["lookup_us"] > 0 and memory["rss_delta_mb"] is not None
    printed = console.file.getvalue()
    assert "live-triton" in printed and "saturation" in printed and "per million keys" in printed


def test_scenarios_are_chosen_by_name_and_rates_replace_theirs():
    chosen = bench_serve.scenarios_for(["batch-100", "precomputed"], [5, 10])
    assert [s.name for s in chosen] == ["batch-100", "precomputed"]
    assert {s.rates for s in chosen} == {(5.0, 10.0)}
    with pytest.raises(ConfigError, match="choose from"):
        bench_serve.scenarios_for(["precomputd"])
    with pytest.raises(ConfigError, match="positive"):
        bench_serve.scenarios_for(None, [0])
