"""`scoring bench` at a few thousand rows, two sizes, one repetition: every path writes the same rows, the model paths
write the model's own predictions, the report holds what the tables print. Never a timing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import DeltaTable
from rich.console import Console

from scoring import columns
from scoring.adapters.delta import STATS_COLUMNS
from scoring.tools import bench, demo
from tests.integration.conftest import read_delta

SIZES = (1_500, 3_000)
# the new paths (the engine's own, tiny/embedded, is checked by the rest of the suite); one repetition, no warm-up
PATHS = ("jvm-copy", "parquet-copy", "tiny/predict_batch_udf", "tiny/mapInArrow-onnx")
MODEL_PATHS = [p for p in PATHS if p.startswith("tiny/")]
TENSOR_PATHS = ("tensor/jvm-copy", "tensor/embedded")  # the tensor model over its own array-column input
FEATURES = demo.feature_names(bench.N_FEATURES)


@pytest.fixture(scope="module")
def bench_run(spark, registry, tmp_path_factory):
    """One small run of the bench over both sizes; the bench sets up a registry of its own (as its command does),
    which moves MLflow's global tracking URI and experiment: the session's are put back afterwards."""
    workdir = tmp_path_factory.mktemp("bench")
    console = Console(file=io.StringIO(), width=200)
    output = workdir / "bench-results.json"
    try:
        report = bench.run_bench(
            rows=list(SIZES),
            repeat=1,
            output=output,
            workdir=workdir,
            only=[*PATHS, *TENSOR_PATHS],
            models=["tiny", "tensor"],
            triton=False,
            console=console,
            warmup=False,
        )
        # the registered model's own files, fetched from the bench's registry by the URI the report names
        model_dir = mlflow.artifacts.download_artifacts(report["models"]["tiny"], dst_path=str(workdir / "model"))
        mlflow.artifacts.download_artifacts(report["models"]["tensor"], dst_path=str(workdir / "tensor-model"))
    finally:
        mlflow.set_tracking_uri(registry)
        mlflow.set_experiment("scoring-tests")
    return workdir, output, report, console.file.getvalue(), Path(model_dir)


def _output(workdir: Path, rows: int, path: str) -> pa.Table:
    folder = workdir / "out" / str(rows) / path.replace("/", "-")
    if path == "parquet-copy":
        return ds.dataset(folder, format="parquet", partitioning="hive").to_table()
    return read_delta(folder)


def _model_predictions(model_dir: Path, features: np.ndarray) -> np.ndarray:
    """The registered model's own predict: its ONNX graph in a fresh onnxruntime session, outside Spark."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: features})[0].reshape(-1)


@pytest.mark.parametrize("rows", SIZES)
def test_every_bench_path_writes_every_input_key_once_with_the_expected_prediction(bench_run, rows):
    workdir, model_dir = bench_run[0], bench_run[-1]
    source = read_delta(workdir / f"input-{rows}").sort_by("customer_id")
    keys = source.column("customer_id").to_numpy()
    matrix = np.column_stack([source.column(f).to_numpy() for f in FEATURES]).astype(np.float32)
    expected = {
        "jvm-copy": matrix.sum(axis=1, dtype=np.float32),  # the JVM references: every feature read, summed
        "parquet-copy": matrix.sum(axis=1, dtype=np.float32),
    } | dict.fromkeys(MODEL_PATHS, _model_predictions(model_dir, matrix))
    for path in PATHS:
        written = _output(workdir, rows, path).sort_by("customer_id")
        assert written.column("customer_id").to_numpy().tolist() == keys.tolist(), path
        assert written.column("ds").to_pylist() == source.column("ds").to_pylist(), path
        np.testing.assert_allclose(
            written.column(columns.PREDICTION).to_numpy(), expected[path], rtol=1e-5, atol=1e-5, err_msg=path
        )
        if path != "parquet-copy":  # every Delta path carries the same lineage: the model it names
            assert set(written.column(columns.MODEL_NAME).to_pylist()) == {"bench_tiny"}, path
            assert written.column(columns.SCORED_AT).null_count == 0, path
            # ... and is created as the engine creates its outputs: file statistics on the key only
            folder = workdir / "out" / str(rows) / path.replace("/", "-")
            assert DeltaTable(str(folder)).metadata().configuration[STATS_COLUMNS] == "customer_id", path
        else:
            assert columns.MODEL_NAME not in written.column_names


@pytest.mark.parametrize("rows", SIZES)
def test_the_tensor_paths_write_every_key_once_with_the_tensor_models_own_predictions(bench_run, rows):
    workdir = bench_run[0]
    source = read_delta(workdir / f"tensor-input-{rows}").sort_by("customer_id")
    emb = np.stack(source.column("emb").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert emb.shape == (rows, bench.TENSOR_WIDTH)
    expected = {
        "tensor/jvm-copy": emb.sum(axis=1, dtype=np.float32),  # the JVM reference: every element read, summed
        "tensor/embedded": _model_predictions(workdir / "tensor-model", emb),  # the registered model's own run
    }
    for path in TENSOR_PATHS:
        written = _output(workdir, rows, path).sort_by("customer_id")
        assert written.column("customer_id").to_pylist() == source.column("customer_id").to_pylist(), path
        predicted = np.asarray(written.column(columns.PREDICTION).to_pylist(), dtype=np.float32).reshape(-1)
        np.testing.assert_allclose(predicted, expected[path], rtol=1e-4, atol=1e-4, err_msg=path)
        assert set(written.column(columns.MODEL_NAME).to_pylist()) == {"bench_tensor"}, path


def test_the_bench_report_holds_the_spread_the_scaling_line_and_the_workers_memory(bench_run):
    _, output, report, printed, _ = bench_run
    assert json.loads(output.read_text()) == report
    assert [s["rows"] for s in report["sizes"]] == list(SIZES)
    for size in report["sizes"]:
        assert list(size["paths"]) == [*PATHS, *TENSOR_PATHS]
        for name, r in size["paths"].items():
            assert r["min_s"] <= r["median_s"] <= r["max_s"], name
            assert r["rows_per_s_min"] <= r["rows_per_s"] <= r["rows_per_s_max"], name
            assert len(r["runs_s"]) == 1, name
        for name in MODEL_PATHS:  # Python workers ran: the sampler found them and their memory
            workers = size["paths"][name]["workers"]
            assert workers["workers"] >= 1, name
            assert 0 < workers["peak_rss_mb_one"] <= workers["peak_rss_mb_total"], name
        assert size["ratios"]["tiny/mapInArrow-onnx / jvm-copy"] > 0
        assert size["ratios"]["tiny/predict_batch_udf / parquet-copy"] > 0
    for name in PATHS:
        line = report["scaling"][name]
        medians = [s["paths"][name]["median_s"] for s in report["sizes"]]
        fixed_s, per_row_s = bench.fit_line(list(SIZES), medians)
        assert line["fixed_s"] == round(fixed_s, 3) and line["per_row_us"] == round(per_row_s * 1e6, 4), name
        assert set(line["rows_per_s"]) == set(line["peak_rss_mb_one"]) == {str(n) for n in SIZES}, name
    assert report["loadavg"]
    for heading in ("min-max s", "vs jvm-copy", "vs parquet-copy", "vs spark_udf", "cost growth", "us/row"):
        assert heading in printed, heading


def test_the_worker_sampler_sees_only_workers_that_ran_in_its_window(spark):
    rows = spark.range(20_000, numPartitions=2)

    def busy(batches):
        for batch in batches:
            total = 0
            for _ in range(2_000_000):  # a little CPU, so that the worker is seen running
                total += 1
            yield batch

    with bench.WorkerMemory(interval_s=0.02) as running:
        rows.mapInArrow(busy, rows.schema).count()
    assert running.peak.workers >= 1
    assert 0 < running.peak.one_mb <= running.peak.total_mb
    idle = bench.WorkerMemory(interval_s=0.02)
    idle.wait_until_idle()  # the busy job's workers are done
    with idle:  # no Python in this job: the kept workers stay idle
        rows.count()
    assert idle.peak == bench.WorkerPeak(0.0, 0.0, 0)
