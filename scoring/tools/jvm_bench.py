"""The JVM-native ONNX scorer prototype (issue 12, "the moonshot"), measured against the engine: docs/jvm-backend.md.

``scoring/jvm/`` holds a small Spark extension (``scoring.jvm.OnnxScorer``, built by ``make jvm``) that scores rows
inside the executor JVM with ONNX Runtime's Java API: no Python worker, no Arrow round trip. This module adds it to a
session (:func:`jvm_jars`), calls it from PySpark (:func:`score_jvm`) and compares it, on the bench's generated input
and models (:mod:`scoring.tools.bench`), with the JVM-only copy and the engine's embedded Arrow path, interleaved, in one
run; then checks its predictions, read back with delta-rs, against onnxruntime in Python on the same rows.

    make jvm && flock /tmp/scoring-bench.lock .venv/bin/python -m scoring.tools.jvm_bench --rows 1000000 --repeat 5

Measured and dropped (about 1.2x the Arrow path on the tiny model, at the issue's threshold rather than clearly above
it); not wired into the engine (no ``runtime.backend: jvm``): the document has the figures and what wiring would take.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from scoring import columns
from scoring.tools import bench_data as _bench
from scoring.tools import demo

_LOGGER = logging.getLogger(__name__)

JVM_DIR = Path(os.environ.get("SCORING_JVM_DIR", Path.home() / ".cache" / "scoring" / "jvm"))
"""Where ``make jvm`` puts ``scoring-jvm.jar`` and the ``onnxruntime-<version>.jar`` it needs."""

JVM_CLASS = "scoring.jvm.OnnxScorer"


def jvm_jars(directory: Path = JVM_DIR) -> list[str]:
    """The two jars a session needs (``spark.jars``): ours and onnxruntime's. Fails with a hint if not built."""
    ours = directory / "scoring-jvm.jar"
    ort = sorted(directory.glob("onnxruntime-*.jar"))
    if not ours.is_file() or not ort:
        raise FileNotFoundError(f"the JVM scorer is not built in {directory}: run `make jvm`")
    return [str(ours), str(ort[-1])]


def session_conf(directory: Path = JVM_DIR) -> dict[str, str]:
    """Spark settings that put the JVM scorer on the driver's and the executors' class path."""
    jars = jvm_jars(directory)
    return {"spark.jars": ",".join(jars), "spark.driver.extraClassPath": os.pathsep.join(jars)}


def score_jvm(
    spark,
    df,
    model_path: str,
    features: Sequence[str],
    passthrough: Sequence[str],
    *,
    prediction: str = columns.PREDICTION,
    batch_rows: int = _bench.BATCH_ROWS,
    intra_op_threads: int = 1,
):
    """`df`'s `passthrough` columns and a float `prediction`: the ONNX model at `model_path` (one float input
    ``[rows, len(features)]``, one float per row out) run on `features` inside the executor JVMs, `batch_rows` rows per
    call. Lazy, like any DataFrame transformation; the model is loaded (and its input checked) once on the driver."""
    from pyspark.sql import DataFrame

    gateway = spark.sparkContext._gateway

    def strings(values: Sequence[str]):
        array = gateway.new_array(gateway.jvm.java.lang.String, len(values))
        for i, v in enumerate(values):
            array[i] = v
        return array

    scorer = spark._jvm.scoring.jvm.OnnxScorer
    jdf = scorer.score(
        df._jdf, model_path, strings(features), strings(passthrough), prediction, batch_rows, intra_op_threads
    )
    return DataFrame(jdf, spark)


def _lineage(ref):
    from scoring.core.stamp import Lineage

    return Lineage(ref.name, ref.version, ref.uri, 0, "bench", dt.datetime.now(dt.UTC).replace(microsecond=0))


def _model_file(ref) -> str:
    return str(Path(ref.local_path) / "model.onnx")


@dataclasses.dataclass
class Setup:
    spark: object
    input_table: str
    workdir: Path
    models: dict[str, object]
    """model key -> ModelRef (registered by the bench's own ``_register_models``)"""

    @property
    def out(self) -> Path:
        return self.workdir / "out" / "jvm-bench"


def prepare(rows: int, workdir: Path, models: Sequence[str]) -> Setup:
    """The bench's input (the same generator and folder as :mod:`scoring.tools.bench`: `rows` x 20 float32 features, 8 date
    partitions, written once) and models, and a session with the JVM scorer's jars on it."""
    from scoring.adapters.spark import get_session

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    table = workdir / f"input-{rows}"
    if not (table / "_delta_log").exists():
        demo.write_delta(table, demo.make_features(rows, n_features=_bench.N_FEATURES, days=8))
    refs = _bench._register_models(workdir, list(models))
    spark = get_session(
        None,
        {**session_conf(), "spark.sql.execution.arrow.maxRecordsPerBatch": str(_bench.BATCH_ROWS)},
        app_name="scoring-jvm-bench",
    )
    spark.sparkContext.setLogLevel("ERROR")
    return Setup(spark, str(table), workdir, refs)


def paths(setup: Setup, models: Sequence[str]) -> dict[str, Callable[[], None]]:
    """The compared paths, each writing key, ds, prediction and the same lineage columns (the engine's
    ``stamp_dataframe``) with the bench's Delta writer (``scoring.tools.bench_data._write``):

    - ``jvm-copy``: no model, no Python; every feature read, the prediction their sum (the bench's reference);
    - ``jvm-copy-1``: the same reading one feature only (the prediction is ``f00``; the older bench reference);
    - ``<model>/embedded``: the engine's Arrow path (``score_dataframe`` with the embedded onnxruntime predictor);
    - ``<model>/jvm``: this prototype (:func:`score_jvm`).
    """
    from pyspark.sql import functions as F

    from scoring.adapters.embedded import EmbeddedSpec
    from scoring.adapters.spark import probe_outputs, score_dataframe, stamp_dataframe
    from scoring.core.score import ScoringSpec

    spark = setup.spark
    features = demo.feature_names(_bench.N_FEATURES)

    def read():
        return spark.read.format("delta").load(setup.input_table).select("customer_id", "ds", *features)

    out = setup.out
    first = setup.models[models[0]]

    def copy_all() -> None:
        total = sum((F.col(f) for f in features[1:]), F.col(features[0])).cast("float")
        df = read().select("customer_id", "ds", total.alias(columns.PREDICTION))
        _bench._write(stamp_dataframe(df, _lineage(first)), out / "jvm-copy")

    def copy_one() -> None:
        df = read().select("customer_id", "ds", F.col("f00").alias(columns.PREDICTION))
        _bench._write(stamp_dataframe(df, _lineage(first)), out / "jvm-copy-1")

    result: dict[str, Callable[[], None]] = {"jvm-copy": copy_all, "jvm-copy-1": copy_one}
    for key in models:
        ref = setup.models[key]
        spec = ScoringSpec(tuple(features), ("customer_id", "ds"), ("customer_id",), ref.uri)
        embedded = EmbeddedSpec(
            ref.uri, ref.local_path, ref.flavors, tuple(features), 1, ref.tracking_uri, ref.registry_uri
        )
        spec = dataclasses.replace(spec, output_schema=probe_outputs(read().limit(16).toArrow(), spec, embedded))

        def engine(ref=ref, key=key, spec=spec, embedded=embedded) -> None:
            _bench._write(score_dataframe(read(), spec, embedded, _lineage(ref)), out / f"{key}-embedded")

        def jvm(ref=ref, key=key) -> None:
            scored = score_jvm(spark, read(), _model_file(ref), features, ["customer_id", "ds"])
            _bench._write(stamp_dataframe(scored, _lineage(ref)), out / f"{key}-jvm")

        result[f"{key}/embedded"] = engine
        result[f"{key}/jvm"] = jvm
    return result


def verify(setup: Setup, models: Sequence[str], rtol: float = 1e-5, atol: float = 1e-5) -> dict[str, dict]:
    """Each model's ``jvm`` output, read back with delta-rs, against onnxruntime in Python on the same input rows
    (also read with delta-rs): every key once, the same partition, predictions within tolerance, lineage present."""
    import onnxruntime as ort
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    features = demo.feature_names(_bench.N_FEATURES)
    source = DeltaTable(setup.input_table).to_pyarrow_table(columns=["customer_id", "ds", *features])
    source = source.sort_by("customer_id")
    matrix = np.column_stack([source.column(f).to_numpy() for f in features]).astype(np.float32)
    report = {}
    for key in models:
        ref = setup.models[key]
        session = ort.InferenceSession(_model_file(ref), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        expected = np.concatenate(
            [session.run(None, {name: matrix[i : i + 100_000]})[0].reshape(-1) for i in range(0, len(matrix), 100_000)]
        )
        scored = DeltaTable(str(setup.out / f"{key}-jvm")).to_pyarrow_table().sort_by("customer_id")
        keys_equal = scored.column("customer_id").equals(source.column("customer_id"))
        ds_equal = pc.all(pc.equal(scored.column("ds").cast("string"), source.column("ds").cast("string"))).as_py()
        got = scored.column(columns.PREDICTION).to_numpy()
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        lineage_ok = all(
            scored.column(c).null_count == 0 for c in (columns.MODEL_NAME, columns.MODEL_VERSION, columns.MODEL_URI)
        ) and set(scored.column(columns.MODEL_VERSION).to_pylist()) == {str(ref.version)}
        report[key] = {
            "rows": scored.num_rows,
            "keys_equal": bool(keys_equal),
            "ds_equal": bool(ds_equal),
            "lineage_ok": bool(lineage_ok),
            "max_abs_diff": float(diff.max()) if len(diff) else 0.0,
            "allclose": bool(len(got) == len(expected) and np.allclose(got, expected, rtol=rtol, atol=atol)),
        }
        report[key]["ok"] = all(report[key][k] for k in ("keys_equal", "ds_equal", "lineage_ok", "allclose"))
    return report


def check(workdir: Path, rows: int = 1000, batch_rows: int = 64) -> dict:
    """Score a small table with the JVM scorer and check it, in a session of its own (``--check``; the test's child
    process): a linear and a small MLP model exported to ONNX files (no registry), several batches per partition with a
    partial last one, an empty input and a one-row input, each written with lineage by the Delta writer and read back
    with delta-rs against onnxruntime in Python on the same rows; a model given the wrong number of feature columns
    fails on the driver with a message that names both counts."""
    import onnxruntime as ort
    from deltalake import DeltaTable

    from scoring.adapters.onnx import sklearn_to_onnx
    from scoring.adapters.spark import get_session, stamp_dataframe
    from scoring.core.stamp import Lineage

    n_features = 6
    features = demo.feature_names(n_features)
    table = demo.make_features(rows, n_features=n_features, days=3)
    demo.write_delta(workdir / "input", table)
    spark = get_session(
        "local[2]", {**session_conf(), "spark.sql.shuffle.partitions": "1"}, app_name="scoring-jvm-check"
    )
    spark.sparkContext.setLogLevel("ERROR")
    source = spark.read.format("delta").load(str(workdir / "input")).repartition(3)
    lineage = Lineage("m", "1", "models:/m/1", 0, "check", dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    matrix = np.column_stack([table.column(f).to_numpy() for f in features]).astype(np.float32)
    report: dict = {}
    for name, hidden in (("linear", ()), ("mlp", (8,))):
        path = workdir / f"{name}.onnx"
        path.write_bytes(
            sklearn_to_onnx(demo.train_regressor(table, features, hidden=hidden), n_features).SerializeToString()
        )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        expected = session.run(None, {session.get_inputs()[0].name: matrix})[0].reshape(-1)
        for case, where in (("all", "true"), ("empty", "customer_id < 0"), ("one", "customer_id = 7")):
            out = workdir / f"out-{name}-{case}"
            scored = score_jvm(
                spark, source.where(where), str(path), features, ["customer_id", "ds"], batch_rows=batch_rows
            )
            _bench._write(stamp_dataframe(scored, lineage), out)
            got = DeltaTable(str(out)).to_pyarrow_table().sort_by("customer_id")
            keys = got.column("customer_id").to_numpy()
            want = expected[keys] if len(keys) else expected[:0]
            report[f"{name}/{case}"] = {
                "rows": got.num_rows,
                "columns": got.column_names,
                "ds_equal": got.column("ds").to_pylist() == [table.column("ds")[int(k)].as_py() for k in keys],
                "max_abs_diff": float(np.abs(got.column(columns.PREDICTION).to_numpy() - want).max())
                if len(keys)
                else 0.0,
                "model_version": sorted(set(got.column(columns.MODEL_VERSION).to_pylist())),
            }
    try:
        score_jvm(spark, source, str(workdir / "linear.onnx"), features[:-1], ["customer_id"])
        report["wrong_features"] = None
    except Exception as e:  # noqa: BLE001 (py4j's error, whose message is what is checked)
        report["wrong_features"] = str(e).splitlines()[0][-300:]
    report["sessions_in_driver_jvm"] = spark._jvm.scoring.jvm.OnnxScorer.cachedSessions()
    spark.stop()
    return report


def _time(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def run(*, rows: int, repeat: int, workdir: Path, output: Path, models: Sequence[str]) -> dict:
    """Warm every path once, then `repeat` interleaved rounds; medians, min and max; then :func:`verify`."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    load_before = _loadavg()
    setup = prepare(rows, workdir, models)
    fns = paths(setup, models)
    for name, fn in fns.items():
        _LOGGER.info("warm-up %s: %.2f s", name, _time(fn))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeat):
        for name, fn in fns.items():
            times[name].append(_time(fn))
            _LOGGER.info("%s (%d/%d): %.2f s", name, i + 1, repeat, times[name][-1])
    load_after = _loadavg()
    results = {
        name: {
            "median_s": round(statistics.median(ts), 3),
            "min_s": round(min(ts), 3),
            "max_s": round(max(ts), 3),
            "rows_per_s": round(rows / statistics.median(ts)),
            "runs_s": [round(t, 3) for t in ts],
        }
        for name, ts in times.items()
    }

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return round(results[a]["rows_per_s"] / results[b]["rows_per_s"], 3)
        return None

    ratios = {}
    for key in models:
        ratios[f"{key}/jvm / {key}/embedded"] = ratio(f"{key}/jvm", f"{key}/embedded")
        ratios[f"{key}/jvm / jvm-copy"] = ratio(f"{key}/jvm", "jvm-copy")
        ratios[f"{key}/jvm / jvm-copy-1"] = ratio(f"{key}/jvm", "jvm-copy-1")
        ratios[f"{key}/embedded / jvm-copy"] = ratio(f"{key}/embedded", "jvm-copy")
    report = {
        "rows": rows,
        "features": _bench.N_FEATURES,
        "batch_rows": _bench.BATCH_ROWS,
        "repeat": repeat,
        "cores": os.cpu_count(),
        "jars": jvm_jars(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "paths": results,
        "ratios": ratios,
        "verify": verify(setup, models),
    }
    output.write_text(json.dumps(report, indent=2))
    return report


def _format(report: dict) -> str:
    lines = [
        f"{report['rows']:,} rows x {report['features']} features, {report['repeat']} runs each "
        f"({report['cores']} cores); loadavg before: {report['loadavg_before']}; after: {report['loadavg_after']}",
        f"{'path':<18}{'median s':>10}{'min s':>8}{'max s':>8}{'rows/s':>12}",
    ]
    for name, r in report["paths"].items():
        lines.append(f"{name:<18}{r['median_s']:>10.2f}{r['min_s']:>8.2f}{r['max_s']:>8.2f}{r['rows_per_s']:>12,}")
    lines += [f"{k}: {v}" for k, v in report["ratios"].items()]
    lines += [f"verify {k}: {json.dumps(v)}" for k, v in report["verify"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(".bench/jvm"))
    parser.add_argument("--output", type=Path, default=Path(".bench/jvm/results.json"))
    parser.add_argument("--models", nargs="+", default=list(_bench.MODELS), choices=list(_bench.MODELS))
    parser.add_argument("--check", action="store_true", help="score a small table and print the check as JSON")
    args = parser.parse_args(argv)
    if args.check:
        args.workdir.mkdir(parents=True, exist_ok=True)
        print(json.dumps(check(args.workdir.resolve())))  # noqa: T201 (the command's output)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("py4j", "mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = run(rows=args.rows, repeat=args.repeat, workdir=args.workdir, output=args.output, models=args.models)
    print(_format(report))  # noqa: T201 (the command's output)
    return 0 if all(v["ok"] for v in report["verify"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
