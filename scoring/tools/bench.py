"""`scoring bench`: rows/s of the engine against the alternatives, measured in one run, reported as ratios.

Every path reads the same Delta snapshot (generated: `rows` x 20 float32 features, 8 date partitions) and writes the
same output shape (key, ds, prediction, lineage columns) with the same Delta writer, except ``parquet-copy``. Models:
``tiny`` (a linear regression) and ``heavy`` (an MLP with two hidden layers of 256), both registered as ONNX.

- ``jvm-copy``: no Python at all; the prediction is the sum of the 20 features (so every feature is read), computed in
  the JVM, with the same lineage and the same Delta writer. The ceiling of a Spark job that scores through Delta.
- ``parquet-copy``: the same JVM-only job from a Parquet copy of the input to Parquet (partitioned by ``ds``), without
  lineage: the floor of any job of this shape.
- ``floor``: the no-model floor: the engine's exact path (key and features to Python workers in an Arrow UDF, a struct
  of predictions back) with a "model" that returns its first feature.
- ``floor-mapInArrow``: whole rows (key, ds, features) through ``mapInArrow`` and back, no model: the other way to
  reach Python, for comparison.
- ``onnxruntime``: the model alone, no Spark: onnxruntime on the same 10,000-row batches from memory, two threads.
- ``embedded``: the engine with the model in each Python worker.
- ``spark_udf``: ``mlflow.pyfunc.spark_udf(env_manager="local")`` on the same registered model.
- ``predict_batch_udf``: ``pyspark.ml.functions.predict_batch_udf`` on ``struct(*features)``, its usual form: a
  ``make_predict_fn`` that opens an onnxruntime session (cached per Python worker by Spark's model cache).
- ``mapInArrow-onnx``: a hand-written ``mapInArrow`` over whole rows with an onnxruntime session cached per Python
  worker (a function of this module, so that workers import it by name).
- ``triton-grpc`` / ``triton-http`` / ``triton-grpc-shm``: the engine with the model in a local Triton sidecar
  (Python backend running onnxruntime, 2 instances), default request size and two requests in flight.
- ``triton-grpc-b<rows>-i<inflight>``: the sweep of request size and requests in flight.
- ``run``: ``scoring.run`` end to end (resolve, pin, count, probe, score, write), tiny model.
- ``run+gates``: the same with an input gate (not_null, between) and an output gate (not_null, mean_between):
  the cost of Great Expectations validation on the Spark DataFrame.

Each path runs once to warm up (not counted), then `repeat` times, interleaved; medians and the spread (min, max) are
reported. With several sizes (``rows``), the repetitions interleave every path at every size, and per path a
least-squares line through time against rows gives the fixed seconds of a run and the seconds per row. Meanwhile a thread of the driver samples
``/proc`` for the RSS of Spark's Python workers (see :class:`WorkerMemory`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from scoring.tools.bench_data import (
    ALL_MODELS,
    BATCH_ROWS,
    MODELS,
    N_FEATURES,
    SWEEP,
    TENSOR,
    TENSOR_HIDDEN,
    TENSOR_WIDTH,
    Bench,
    _prepare,
    _register_models,
    _session,
    tensor_input,
    tensor_model,
)
from scoring.tools.bench_data import _write as _write
from scoring.tools.bench_memory import WorkerMemory, WorkerPeak, _measure, _scaling, _summary, fit_line, spark_jvm_pid
from scoring.tools.bench_paths import IdentitySpec, _paths, _sidecar

__all__ = [  # this module's own, and the data's, paths' and memory's public names it re-exports
    "ALL_MODELS",
    "BATCH_ROWS",
    "MODELS",
    "N_FEATURES",
    "REFERENCES",
    "SWEEP",
    "TENSOR",
    "TENSOR_HIDDEN",
    "TENSOR_WIDTH",
    "Bench",
    "IdentitySpec",
    "WorkerMemory",
    "WorkerPeak",
    "fit_line",
    "run_bench",
    "spark_jvm_pid",
    "tensor_input",
    "tensor_model",
]


def run_bench(
    *,
    rows: int | list[int],
    repeat: int,
    output: Path,
    workdir: Path,
    only: list[str] | None,
    models: list[str],
    triton: bool,
    console,
    warmup: bool = True,
) -> dict:
    """Measure the chosen paths at each size in `rows` (in turn; interleaved repetitions within a size), write the
    JSON report to `output`, print the tables, and return the report."""
    from rich.progress import Progress

    sizes = [rows] if isinstance(rows, int) else list(rows)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    refs = _register_models(workdir, models)
    spark = _session()
    measured = []
    with _sidecar(workdir, refs, triton) as urls:
        runs: dict[tuple[int, str], Callable[[], None]] = {}
        for size in sizes:
            bench = _prepare(spark, size, workdir, refs)
            runs |= {(size, name): fn for name, fn in _paths(bench, set(only) if only else None, urls).items()}
        times: dict[tuple[int, str], list[float]] = {run: [] for run in runs}
        peaks: dict[tuple[int, str], list[WorkerPeak]] = {run: [] for run in runs}
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("benchmark", total=len(runs) * (repeat + warmup))
            warmups = runs.items() if warmup else ()
            for (size, name), fn in warmups:  # JIT, worker start-up, model load; not counted
                progress.update(task, description=f"warm-up {name} ({size:,} rows)")
                _measure(fn)
                progress.advance(task)
            # interleaved over paths and sizes, so that drift in the machine's speed hits every path and size alike
            for i in range(repeat):
                for (size, name), fn in runs.items():
                    progress.update(task, description=f"{name} ({size:,} rows, {i + 1}/{repeat})")
                    elapsed, peak = _measure(fn)
                    times[size, name].append(elapsed)
                    peaks[size, name].append(peak)
                    progress.advance(task)
    for size in sizes:
        results = {name: _summary(size, times[s, name], peaks[s, name]) for s, name in runs if s == size}
        measured.append({"rows": size, "paths": results, "ratios": _ratios(results)})
    report = {
        "sizes": measured,
        "scaling": _scaling(measured),
        "features": N_FEATURES,
        "batch_rows": BATCH_ROWS,
        "repeat": repeat,
        "warmup": warmup,
        "models": {k: r.uri for k, r in refs.items()},
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg": _loadavg(),
        "versions": {
            p: version(p) for p in ("pyspark", "delta-spark", "mlflow", "onnxruntime", "pyarrow", "tritonclient")
        },
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    output.write_text(json.dumps(report, indent=2))
    _print(console, report)
    return report


def _loadavg() -> str | None:
    """The machine's load at the end of the run (1, 5, 15 minutes), so that a reader can judge the figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


REFERENCES = ("jvm-copy", "parquet-copy", "floor")
"""Paths every other path is compared with; per model also its ``embedded``, ``spark_udf`` and ``onnxruntime``."""


def _ratios(results: dict) -> dict[str, float]:
    def rate(name: str) -> float | None:
        return results[name]["rows_per_s"] if name in results else None

    ratios = {}
    if "run" in results and "run+gates" in results:
        ratios["run+gates / run"] = round(results["run+gates"]["rows_per_s"] / results["run"]["rows_per_s"], 3)
    for name in ("run", "run-partial"):  # what the scoped replace costs against a first write (seconds, not rows/s)
        if name in results and "run-first-write" in results:
            ratios[f"{name} seconds / run-first-write seconds"] = round(
                results[name]["median_s"] / results["run-first-write"]["median_s"], 3
            )
    for name in results:
        key = name.rpartition("/")[0]
        bases = {base: rate(base) for base in REFERENCES}
        if key:
            bases |= {base: rate(f"{key}/{base}") for base in ("embedded", "spark_udf", "onnxruntime")}
        for base, value in bases.items():
            if value and not name.endswith(base):
                ratios[f"{name} / {base}"] = round(results[name]["rows_per_s"] / value, 3)
    return ratios


def _print(console, report: dict) -> None:
    from rich.table import Table

    if not console.is_terminal:  # a file or a pipe: do not squeeze the tables into 80 columns
        from rich.console import Console

        console = Console(file=console.file, width=200)
    bases = ("jvm-copy", "parquet-copy", "floor", "embedded", "spark_udf")
    for size in report["sizes"]:
        results, rows = size["paths"], size["rows"]
        table = Table(
            title=f"{rows:,} rows x {N_FEATURES} features, {report['repeat']} runs each, medians and min-max "
            f"({report['cores']} cores, load {report['loadavg']})"
        )
        for col in ("path", "median s", "min-max s", "rows/s", *(f"vs {b}" for b in bases), "worker RSS MB"):
            table.add_column(col, justify="left" if col == "path" else "right")
        for name, r in results.items():
            key = name.rpartition("/")[0]

            def vs(base: str, r=r, key=key, results=results) -> str:
                base = base if base in REFERENCES else f"{key}/{base}"
                return f"{r['rows_per_s'] / results[base]['rows_per_s']:.2f}x" if base in results else "-"

            w = r["workers"]
            table.add_row(
                name,
                f"{r['median_s']:.2f}",
                f"{r['min_s']:.2f}-{r['max_s']:.2f}",
                f"{r['rows_per_s']:,}",
                *(vs(b) for b in bases),
                f"{w['peak_rss_mb_one']:.0f} / {w['peak_rss_mb_total']:.0f} ({w['workers']})" if w["workers"] else "-",
            )
        console.print(table)
    if len(report["sizes"]) < 2:
        return
    sizes = [s["rows"] for s in report["sizes"]]
    table = Table(
        title="cost growth: rows/s at each size, the line through the medians (fixed s + us per row), "
        "workers' peak RSS MB at each size (one worker / all)"
    )
    table.add_column("path", justify="left")
    for col in (*(f"rows/s {n:,}" for n in sizes), "fixed s", "us/row", *(f"RSS {n:,}" for n in sizes)):
        table.add_column(col, justify="right")
    for name, entry in report["scaling"].items():
        table.add_row(
            name,
            *(f"{entry['rows_per_s'][str(n)]:,}" for n in sizes),
            f"{entry.get('fixed_s', float('nan')):.2f}",
            f"{entry.get('per_row_us', float('nan')):.3f}",
            *(f"{entry['peak_rss_mb_one'][str(n)]:.0f} / {entry['peak_rss_mb_total'][str(n)]:.0f}" for n in sizes),
        )
    console.print(table)
