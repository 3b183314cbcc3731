"""Tools: `scoring demo` (a demo lake, model and run), `scoring demo-serve`, `scoring demo-stream`, and the benchmarks
`scoring bench`, `scoring bench-stream` and `scoring bench-serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.app import SET_HELP, app, err, out
from scoring.cli.render import print_stream_summary, print_summary
from scoring.errors import ConfigError, require_extra


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Rows in the demo input table.")] = 100_000,
    fresh: Annotated[bool, typer.Option("--fresh", help="Recreate the demo lake and model.")] = False,
    config: Annotated[Path, typer.Option(help="Job config to run on the demo lake.")] = Path("conf/jobs/demo.yaml"),
) -> None:
    """Create a demo lake (.demo/lake/features, partitioned by ds), train and register a demo model
    (models:/churn@champion in .demo/mlflow.db), then run the demo job and print its summary."""
    require_extra("demo", "scoring demo")
    from scoring import load_job_config
    from scoring.engine.progress import default_reporter
    from scoring.modes.batch import run as run_batch
    from scoring.tools.demo import DEMO_DIR, create_demo

    made = create_demo(DEMO_DIR, rows, force=fresh)
    err.print(f"demo lake: {made['input_table']}   registry: {made['tracking_uri']}   model: {made['model']}")
    summary = run_batch(load_job_config(config), reporter=default_reporter())
    print_summary(summary)
    out.print(f"\nRead the predictions: scoring show {summary.output_table}   (or any Delta reader)")


@app.command()
def bench(
    rows: Annotated[
        list[int] | None,
        typer.Option(
            help="Rows of generated input (20 float features); repeat it to measure several sizes, e.g. "
            "--rows 1000000 --rows 10000000: the repetitions interleave every path at every size; per path the fixed seconds and the per-row "
            "slope (a least-squares line through the medians). Default: 1,000,000."
        ),
    ] = None,
    repeat: Annotated[int, typer.Option(help="Repetitions of each path; medians and min-max are reported.")] = 5,
    warmup: Annotated[bool, typer.Option(help="Run each path once, not counted, before the repetitions.")] = True,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON results.")] = Path(
        "bench-results.json"
    ),
    workdir: Annotated[Path, typer.Option(help="Scratch directory for tables and the registry.")] = Path(".bench"),
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only these paths (repeatable), e.g. jvm-copy, parquet-copy, floor, embedded, spark_udf, "
            "predict_batch_udf, mapInArrow-onnx, triton-grpc, tiny/embedded."
        ),
    ] = None,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="Models to run (repeatable): tiny and heavy (over 20 scalar features), tensor (an MLP over one "
            "float32[64] array column of its own input: tensor/jvm-copy, tensor/embedded, tensor/triton-grpc).",
        ),
    ] = None,
    triton: Annotated[bool, typer.Option(help="Include the Triton paths (starts a local sidecar).")] = True,
) -> None:
    """Measure rows/s of the engine against the alternatives, in one run: the JVM-only references (jvm-copy through
    Delta with lineage, parquet-copy from Parquet to Parquet), the no-model floors, raw onnxruntime, the embedded
    engine, mlflow.pyfunc.spark_udf, predict_batch_udf and a hand-written mapInArrow scorer on the same model, and
    Triton over gRPC, HTTP and shared memory with a sweep of request size and requests in flight. Also samples the
    Python workers' peak RSS per path; and a tensor model (an array column) through the engine and Triton."""
    from scoring.tools.bench import ALL_MODELS, run_bench

    chosen = models or list(ALL_MODELS)
    unknown = [m for m in chosen if m not in ALL_MODELS]
    if unknown:
        raise ConfigError(f"--model {unknown}: choose from {list(ALL_MODELS)}")
    sizes = rows or [1_000_000]
    if any(n < 1 for n in sizes):
        raise ConfigError(f"--rows {sizes}: each size must be at least 1")
    run_bench(
        rows=sizes,
        repeat=repeat,
        output=output,
        workdir=workdir,
        only=only,
        models=chosen,
        triton=triton,
        console=out,
        warmup=warmup,
    )
    out.print(f"written to {output}")


@app.command("bench-stream")
def bench_stream(
    rate: Annotated[float, typer.Option(help="Events per second the producer sends (20 float features).")] = 10_000,
    duration_s: Annotated[float, typer.Option(help="Seconds of production per run (after a warm-up).")] = 60.0,
    repeat: Annotated[int, typer.Option(help="Runs of each path; medians and min-max are reported.")] = 1,
    path: Annotated[
        list[str] | None, typer.Option(help="Paths to run (repeatable): delta-delta, kafka-delta, kafka-kafka.")
    ] = None,
    trigger: Annotated[
        str | None, typer.Option(help="Trigger of the kafka-kafka path (stream.trigger), e.g. real-time.")
    ] = None,
    interval_s: Annotated[float, typer.Option(help="stream.interval_s of the micro-batch paths.")] = 0.0,
    commit_interval_s: Annotated[
        float, typer.Option(help="delta-delta: seconds between the producer's source commits.")
    ] = 0.1,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON results.")] = Path(
        "bench-stream-results.json"
    ),
    workdir: Annotated[Path, typer.Option(help="Scratch directory: tables, checkpoints, registry, broker.")] = Path(
        ".bench/stream"
    ),
) -> None:
    """Measure the streaming mode end to end: a producer process sends events at a fixed rate (to a Delta table or a
    local Kafka broker), an independent reader records when each row reaches the sink; prints delivered, duplicate
    and missing rows, throughput, lag p50/p95/p99/max beside the stream's own, and where a micro-batch's time goes."""
    require_extra("stream", "scoring bench-stream")
    from scoring.tools.bench_stream import paths_for, run_bench_stream

    run_bench_stream(
        rate=rate,
        duration_s=duration_s,
        repeat=repeat,
        paths=paths_for(path, trigger, interval_s),
        output=output,
        workdir=workdir,
        commit_interval_s=commit_interval_s,
        console=out,
    )
    out.print(f"written to {output}")


@app.command("bench-serve")
def bench_serve(
    duration_s: Annotated[float, typer.Option(help="Seconds of each fixed-rate run.")] = 5.0,
    repeat: Annotated[int, typer.Option(help="Runs of each scenario and rate (interleaved); medians and min-max.")] = 3,
    scenario: Annotated[
        list[str] | None,
        typer.Option(
            help="Scenarios to run (repeatable): precomputed, precomputed-features, live-embedded, live-triton, "
            "batch-100."
        ),
    ] = None,
    rate: Annotated[
        list[float] | None, typer.Option(help="Requests/s of the fixed-rate runs (repeatable), for every scenario.")
    ] = None,
    saturation: Annotated[bool, typer.Option(help="Search each scenario's saturation throughput.")] = True,
    saturation_p99_ms: Annotated[
        float, typer.Option(help="A saturation step holds while its p99 is under this.")
    ] = 100.0,
    index_keys: Annotated[int, typer.Option(help="Keys of the index whose memory is measured (0: skip).")] = 1_000_000,
    wait_idle_s: Annotated[
        float, typer.Option(help="Before each run, wait up to this long for other processes to leave the cores.")
    ] = 10.0,
    busy_retries: Annotated[
        int, typer.Option(help="Runs again a run during which other processes took over a quarter of a core.")
    ] = 2,
    wait_budget_s: Annotated[
        float, typer.Option(help="Longest time, in all, spent waiting for a quiet machine and running again.")
    ] = 300.0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Passed to each scoring serve.")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON results.")] = Path(
        "bench-serve-results.json"
    ),
    workdir: Annotated[Path, typer.Option(help="Scratch directory: demo lake, registry, Triton repository.")] = Path(
        ".bench/serve"
    ),
    baseline_ref: Annotated[
        str | None,
        typer.Option(help="A git revision: run every scenario also against that commit's code, interleaved."),
    ] = None,
) -> None:
    """Measure scoring serve under an open-loop load: the service and the load generator in processes of their own,
    on loopback; latency p50/p95/p99/p99.9 from each request's scheduled send time for precomputed reads, live
    inference (embedded and Triton) and 100-key batches, at fixed rates and at saturation; and the precomputed
    index's memory per million keys. SCORING_BENCH_SERVE_PROFILE=<dir> runs each service under cProfile."""
    require_extra("serve", "scoring bench-serve")
    from scoring.tools.bench_serve import run_bench_serve, scenarios_for

    run_bench_serve(
        scenarios=scenarios_for(scenario, rate),
        duration_s=duration_s,
        repeat=repeat,
        saturation=saturation,
        saturation_p99_ms=saturation_p99_ms,
        index_keys=index_keys,
        wait_idle_s=wait_idle_s,
        busy_retries=busy_retries,
        wait_budget_s=wait_budget_s,
        serve_sets=set_ or [],
        baseline_ref=baseline_ref,
        output=output,
        workdir=workdir,
        console=out,
    )
    out.print(f"written to {output}")


@app.command("demo-serve")
def demo_serve(
    config: Annotated[Path, typer.Option(help="Serve job config.")] = Path("conf/jobs/serve.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
) -> None:
    """Serve the demo's scores over HTTP for a moment and show a few requests with their answers: a key the batch
    job scored (precomputed), a key it never saw (scored live), and, after the model alias moves to a newly registered
    version, the same scored key gone stale (then scored live by the new version). Creates the demo lake, model and
    batch output first when they are missing; puts the alias back at the end."""
    require_extra("serve", "scoring demo-serve")
    from scoring.engine.progress import default_reporter
    from scoring.tools.demo import DEMO_DIR
    from scoring.tools.demo_serve import print_exchanges, run_demo_serve

    exchanges = run_demo_serve(DEMO_DIR, config, set_ or [], reporter=default_reporter())
    print_exchanges(out, exchanges)


@app.command("demo-stream")
def demo_stream(
    config: Annotated[Path, typer.Option(help="Stream job config (Delta -> Delta).")] = Path("conf/jobs/stream.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
    appends: Annotated[int, typer.Option(help="Commits appended to the source while the stream runs.")] = 5,
    rows: Annotated[int, typer.Option(help="Rows per appended commit.")] = 1_000,
    every_s: Annotated[float, typer.Option(help="Seconds between appended commits.")] = 1.0,
) -> None:
    """Stream new rows of a Delta table through the demo model for a few seconds: create the source table (and the
    demo model, as `scoring demo`), start the stream of conf/jobs/stream.yaml, append rows, stop it cleanly, and show
    the scored rows with their lineage, the commits and the lag."""
    require_extra("demo", "scoring demo-stream")
    from scoring.engine.progress import default_reporter
    from scoring.tools.demo import DEMO_DIR
    from scoring.tools.demo_stream import print_result, run_demo_stream

    result = run_demo_stream(
        DEMO_DIR,
        config,
        set_ or [],
        appends=appends,
        rows_per_append=rows,
        every_s=every_s,
        reporter=default_reporter(),
    )
    print_stream_summary(result.record)
    print_result(out, result)
