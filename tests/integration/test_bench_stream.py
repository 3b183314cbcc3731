"""`scoring bench-stream` and `scoring demo-stream` end to end, at a tiny rate: a real producer process, a real Kafka
broker, real Spark streaming queries and an independent reader. The figures are checked for honesty (every key
accounted for, lags present and non-negative), never for speed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import pytest
from rich.console import Console

from scoring.errors import ConfigError
from scoring.tools import bench_stream, demo_stream

pytest_plugins = ["tests.integration.kafka_fixtures"]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_registry_then_back(registry):
    """The bench and the demo set up registries of their own (as their commands do), which moves MLflow's global
    tracking URI and experiment: put the session's back afterwards."""
    yield
    mlflow.set_tracking_uri(registry)
    mlflow.set_experiment("scoring-tests")


def test_bench_stream_accounts_for_every_key_on_each_path(spark, kafka_broker, tmp_path, own_registry_then_back):
    console = Console(file=io.StringIO(), width=200)
    output = tmp_path / "bench-stream-results.json"
    report = bench_stream.run_bench_stream(
        rate=200,
        duration_s=3,
        repeat=1,
        output=output,
        workdir=tmp_path / "bench",
        spark=spark,
        bootstrap=kafka_broker.bootstrap,
        console=console,
    )
    assert json.loads(output.read_text())["paths"].keys() == {"delta-delta", "kafka-delta", "kafka-kafka"}
    for name, path in report["paths"].items():
        (run,) = path["runs"]
        assert run["produced"] == 600, name
        assert (run["delivered"], run["missing"], run["duplicates"], run["unexpected"]) == (600, 0, 0, 0), name
        if run["sink"] == "delta":  # the final table, read with delta-rs, says the same
            assert (run["table_rows"], run["table_missing"], run["table_duplicates"]) == (600, 0, 0), name
        for figure in ("lag_p50_s", "lag_p95_s", "lag_p99_s", "lag_max_s", "stream_lag_p50_s", "stream_lag_max_s"):
            assert run[figure] is not None and run[figure] >= 0, (name, figure)
        assert run["lag_p50_s"] <= run["lag_p95_s"] <= run["lag_p99_s"] <= run["lag_max_s"], name
        assert run["stream_rows_in"] == 600, name  # the timed window only: the warm-up rows are not counted again
        assert run["batches"] == run["stream_batches"] >= 1, name  # Spark's progress reports: every micro-batch
        assert sum(b["rows"] for b in run["micro_batches"]) == 600, name
        assert run["batch_ms_p50"] > 0 and run["throughput_rows_per_s"] > 0, name
        assert path["median"]["lag_p95_s"] == run["lag_p95_s"], name
    printed = console.file.getvalue()
    assert "kafka-kafka" in printed and "where a micro-batch's time goes" in printed


def test_paths_take_the_trigger_only_where_it_can_run():
    paths = {p.name: p for p in bench_stream.paths_for(None, "real-time", 0.5)}
    assert paths["kafka-kafka"].trigger == "real-time"
    assert paths["kafka-delta"].trigger == paths["delta-delta"].trigger == "micro-batch"
    assert {p.interval_s for p in paths.values()} == {0.5}
    with pytest.raises(ConfigError, match="choose from"):
        bench_stream.paths_for(["kafka-nowhere"])


def test_demo_stream_scores_every_appended_row_with_its_lineage(spark, tmp_path, own_registry_then_back):
    lake = tmp_path / "lake"
    overrides = [
        f"input.table={lake / 'events'}",
        f"output.table={lake / 'churn_scores_stream'}",
        f"stream.checkpoint={tmp_path / 'checkpoint'}",
        f"model.tracking_uri=sqlite:///{tmp_path / 'demo' / 'mlflow.db'}",
    ]
    result = demo_stream.run_demo_stream(
        tmp_path / "demo",
        ROOT / "conf" / "jobs" / "stream.yaml",
        overrides,
        appends=3,
        rows_per_append=200,
        every_s=0.2,
        model_rows=2_000,
        spark=spark,
    )
    assert result.rows_appended == result.rows_delivered == 600
    assert result.record.rows_in == result.record.rows_written == 600
    assert result.record.stopped == "stopped" and result.record.lag_p50_s >= 0
    assert [a["rows"] for a in result.per_append] == [200, 200, 200]
    assert all(a["lag_min_s"] >= 0 for a in result.per_append)
    assert {"model_version", "input_version", "scoring_run_id", "event_time"} <= set(result.rows.column_names)
    assert result.commits and result.commits[0].metadata["mode"] == "stream"
    out = Console(file=io.StringIO(), width=200)
    demo_stream.print_result(out, result)
    assert "lag per appended commit" in out.file.getvalue()

    again = demo_stream.run_demo_stream(
        tmp_path / "demo",
        ROOT / "conf" / "jobs" / "stream.yaml",
        overrides,
        appends=1,
        rows_per_append=100,
        model_rows=2_000,
        spark=spark,
    )  # resumes from the checkpoint: only the new rows are read
    assert again.first_key == 600 and again.record.rows_in == again.rows_delivered == 100
