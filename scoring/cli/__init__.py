"""The `scoring` command: thin. Parse, call a mode, print a summary; a ScoringError becomes a plain message and exit 1."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from scoring.errors import ConfigError, ScoringError, exit_code_for

app = typer.Typer(
    help="Batch scoring on the data lake: read a Delta snapshot, score it with an MLflow model inside Spark, "
    "write version-stamped predictions to Delta.\n\nStart with `scoring demo`, then `scoring run conf/jobs/demo.yaml`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

_DEBUG = False


def _setup_logging(verbose: bool) -> None:
    """Quiet by default: scoring's progress, its warnings and everyone's errors. Verbose: scoring's every step, and all
    that Spark (its log4j, Ivy's resolution of the Delta jars) and MLflow print (see scoring.engine.progress.verbose)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("scoring").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("scoring.engine.progress").setLevel(logging.INFO)  # progress lines (outside a terminal) show either way
    logging.getLogger("py4j").setLevel(logging.WARNING)  # a line for every call into the JVM, even with -v
    if not verbose:
        for noisy in ("mlflow", "alembic", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of plain error messages.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Log each step, and show all that Spark, Ivy and MLflow print "
            "(by default: progress, warnings and errors only).",
        ),
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug
    _setup_logging(verbose or debug)


def _fail(e: ScoringError) -> None:
    if _DEBUG:
        raise e
    err.print(f"[bold red]error:[/bold red] {e}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(exit_code_for(e))


def _gate_line(report) -> str:
    verdict = "passed" if report["success"] else f"set aside {report['quarantined']:,} row(s) failing"
    return f"{verdict}: {len(report['results'])} expectation(s)"


def print_summary(summary) -> None:
    table = Table(title=f"scoring run {summary.run_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    if summary.committed:
        status = "committed"
    elif summary.completed_earlier_attempt:
        status = "already committed by an earlier attempt of this run id: nothing scored again, missing writes done"
    else:
        status = "already committed by this run id: nothing written again"
    kept = "" if summary.rows_kept is None else f", {summary.rows_kept:,} kept as they were"
    rows = [
        ("status", status),
        ("model", f"{summary.model_name} version {summary.model_version} ({summary.requested_model_uri})"),
        (
            "input",
            f"{summary.input_table} @ version {summary.input_version}"
            + (f" where {summary.input_where}" if summary.input_where else ""),
        ),
        ("output", f"{summary.output_table} @ version {summary.output_version} (was {summary.output_version_before})"),
        ("rows read", f"{summary.rows_read:,}"),
        ("rows written", f"{summary.rows_written:,}"),
        ("output rows", f"{summary.rows_replaced:,} replaced{kept}"),
        ("rows rejected", f"{summary.rows_rejected:,} (invalid features or rows the output cannot take)"),
        ("rows quarantined", f"{summary.rows_quarantined:,} (failed expectations or invalid predictions)"),
        ("predictions", ", ".join(summary.prediction_columns)),
        *([("set aside in", summary.quarantine_table)] if summary.quarantine_table else []),
        *[(f"{which} gate", _gate_line(r)) for which, r in summary.quality.items()],
        (
            "elapsed",
            f"{summary.elapsed_s:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in summary.timings_s.items()) + ")",
        ),
        ("throughput", f"{summary.rows_per_s:,.0f} rows/s"),
        *[("warning", w) for w in summary.warnings],
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


_SET_HELP = (
    "Override a config key by its dotted path (repeatable), e.g. --set input.version=3 "
    "--set model.uri=models:/churn/2 --set \"input.where=ds = '2026-11-01'\". Values are YAML."
)


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="YAML job config, e.g. conf/jobs/demo.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.")] = False,
) -> None:
    """A dry run: resolve the model, pin the input snapshot, check the job, count what would be scored, and show
    which output partitions and how many output rows a run would replace. Writes nothing.

    Exit status: as `scoring run` (0 ok, 1 a run would fail, 2 a bad config).
    """
    from scoring import load_job_config
    from scoring.modes.batch import plan as plan_batch

    try:
        job = load_job_config(config, set_ or [])
        the_plan = plan_batch(job, dry_run=True)
    except ScoringError as e:
        _fail(e)
        return
    if as_json:
        payload = the_plan.to_dict()
        print(json.dumps(payload, indent=2, default=str))
        return
    out.print(f"[bold]plan[/bold] for {config} (nothing is written)")
    for line in the_plan.describe():
        out.print("  " + line, markup=False, highlight=False)
    replaced = the_plan.rows_to_replace
    if replaced is not None:
        out.print(f"  a run would replace {replaced:,} of {the_plan.output_rows:,} output rows and keep the rest")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML job config, e.g. conf/jobs/demo.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Score a Delta table with an MLflow model and write version-stamped predictions to Delta.

    Config keys: input.table, input.key, input.features, input.where, input.version, input.on_invalid_rows;
    model.uri, model.tracking_uri, model.registry_uri; runtime.backend, runtime.batch_rows, runtime.embedded.threads,
    runtime.triton.*; quality.input, quality.output, quality.quarantine_table; schedule.*;
    output.table, output.partition_by; spark.master, spark.conf; name, run_id. See the README for each.

    A run replaces exactly the (key, partition) rows it selects and keeps every other output row; it prints its
    plan (`scoring plan` shows it without running) before it scores.

    Exit status: 0 on success; 1 on bad input or a failed run; 2 on a bad config; 75 on a transient failure
    (a model server down, another writer committed first): a retry may succeed. On any failure the output and
    quarantine tables are left as they were.
    """
    from scoring import load_job_config
    from scoring.engine.progress import default_reporter
    from scoring.modes.batch import run as run_batch

    try:
        job = load_job_config(config, set_ or [])
        summary = run_batch(job, reporter=default_reporter())
    except ScoringError as e:
        _fail(e)
        return
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        print_summary(summary)


def print_stream_summary(record) -> None:
    table = Table(title=f"scoring stream {record.query_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    lag = (
        "no rows"
        if record.lag_p50_s is None
        else f"p50 {record.lag_p50_s:.3f} s, p95 {record.lag_p95_s:.3f} s, p99 {record.lag_p99_s:.3f} s, "
        f"max {record.lag_max_s:.3f} s"
    )
    rows = [
        (
            "status",
            {
                "drained": "drained: everything available was processed",
                "stopped": "stopped on request",
                "failed": "failed",
            }.get(record.stopped, record.stopped),
        ),
        ("source", record.source),
        ("sinks", ", ".join(record.sinks) + (f" ({record.output_table})" if "delta" in record.sinks else "")),
        ("checkpoint", record.checkpoint),
        ("model", f"{record.model_uri} (versions used: {', '.join(record.model_versions)})"),
        (
            "micro-batches",
            f"{record.batches:,}"
            + (
                f" ({record.batches_skipped:,} already committed before a restart: not written again)"
                if record.batches_skipped
                else ""
            ),
        ),
        ("rows read", f"{record.rows_in:,}"),
        ("rows written", f"{record.rows_written:,}"),
        (
            "rows set aside",
            f"{record.rows_quarantined:,}" + (f" (in {record.quarantine_table})" if record.quarantine_table else ""),
        ),
        ("lag", lag + " (event or source commit time to output commit)"),
        ("elapsed", f"{record.elapsed_s:.1f} s ({record.rows_per_s:,.0f} rows/s)"),
        *([("metrics", record.metrics_url)] if record.metrics_url else []),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


@app.command()
def stream(
    config: Annotated[Path, typer.Argument(help="YAML job config with a stream: section, e.g. conf/jobs/stream.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
    available_now: Annotated[
        bool,
        typer.Option("--available-now", help="Process what the source holds now, then stop (an incremental batch)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Score a stream continuously: new rows of an append-only Delta table, or JSON records of a Kafka topic, scored
    with the same model, checks, gates and lineage as `scoring run`, each micro-batch committed to the output table
    exactly once (and optionally sent to a Kafka topic).

    Runs until stopped: Ctrl-C or SIGTERM stops it after the micro-batch in progress (a second Ctrl-C stops at once;
    the checkpoint makes that safe too). With --available-now it processes what is there and exits, with a summary.
    Progress shows one line per micro-batch: rows, rows/s, lag.

    Config keys: stream.source (delta | kafka), stream.checkpoint, stream.trigger, stream.interval_s,
    stream.max_files_per_trigger, stream.max_offsets_per_trigger, stream.event_time, stream.sinks, stream.kafka.*,
    stream.kafka_sink.*, stream.follow_alias, stream.alias_check_interval_s, stream.metrics_port,
    stream.metrics_host; and input.key, input.features, model, runtime, quality, output as for `scoring run`. See the
    README's Streaming section.

    Exit status as `scoring run`: 0 when stopped or drained; 1 when a micro-batch fails for the input's reason (a
    gate with policy fail, invalid features): a restart meets the same micro-batch; 2 on a bad config; 75 when a
    model server or broker is down: a restart resumes from the checkpoint.
    """
    import signal
    import threading

    from scoring import load_job_config
    from scoring.engine.progress import LogReporter
    from scoring.modes.stream import run as run_stream

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        err.print(f"{signal.Signals(signum).name}: stopping after the micro-batch in progress", highlight=False)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        job = load_job_config(config, set_ or [])
        record = run_stream(job, reporter=LogReporter(), available_now=available_now, stop=stop)
    except ScoringError as e:
        _fail(e)
        return
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if as_json:
        print(json.dumps(record.to_dict(), indent=2, default=str))
    else:
        print_stream_summary(record)


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(help="YAML job config.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Config override.")] = None,
    master: Annotated[str | None, typer.Option(help="Spark master, e.g. local[4], yarn, k8s://...")] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the spark-submit command instead of running it.")
    ] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="Run the job's stream: section (as `scoring stream`), not a batch run.")
    ] = False,
    available_now: Annotated[
        bool, typer.Option("--available-now", help="With --stream: process what is there, then stop.")
    ] = False,
) -> None:
    """Run a job through spark-submit (the way Airflow's SparkSubmitOperator does), with the Delta jars (and, for a
    stream, Spark's Kafka connector) as --packages."""
    import shlex
    import subprocess

    from scoring.adapters.spark import spark_submit_command, spark_submit_env

    command = spark_submit_command(str(config), set_ or [], master, stream=stream, available_now=available_now)
    if print_only:
        print(shlex.join(command))
        return
    raise typer.Exit(subprocess.call(command, env=spark_submit_env()))


@app.command()
def export(
    model_uri: Annotated[str, typer.Argument(help="models:/<name>@<alias> or models:/<name>/<version>.")],
    repository: Annotated[
        Path, typer.Option("--repository", "-r", help="Triton model repository to write into.")
    ] = Path("sidecars/repository"),
    target: Annotated[
        str | None, typer.Option(help="onnxruntime (NVIDIA's Triton image) or python (the Triton bundled here).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Job config whose runtime.triton.model (batching, instances) and target to use.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI).")
    ] = None,
) -> None:
    """Export a registered model version to a Triton model repository (<repo>/<model>/config.pbtxt and
    <repo>/<model>/<version>/), the Triton version being the MLflow version. Exporting the same version again is a no-op."""
    from scoring import load_job_config
    from scoring.adapters.registry import resolve_model
    from scoring.adapters.triton_export import export_model
    from scoring.config import TritonModelConfig

    try:
        job = load_job_config(config) if config else None
        triton = job.runtime.triton if job else None
        ref = resolve_model(model_uri, tracking_uri or (job.model.tracking_uri if job else None))
        from scoring.adapters.registry import signature_inputs

        names = signature_inputs(ref)
        n_features = len(job.input.features) if job and job.input.features else (len(names) if names else None)
        chosen = target or (triton.target if triton else "python")
        if chosen not in ("python", "onnxruntime"):
            raise ConfigError(f"--target {chosen!r}: use onnxruntime or python")
        result = export_model(
            ref,
            repository,
            target=chosen,
            model_config=triton.model if triton else TritonModelConfig(),
            n_features=n_features,
        )
    except ScoringError as e:
        _fail(e)
        return
    state = "exported" if result.changed else "already exported (nothing written)"
    out.print(f"{ref.uri} -> {result.path}/{result.version} as {result.model_name} ({result.target}): {state}")


sidecar_app = typer.Typer(
    help="A local Triton Inference Server (the sidecar) serving a model repository.", no_args_is_help=True
)
app.add_typer(sidecar_app, name="sidecar")


@sidecar_app.command("start")
def sidecar_start(
    repository: Annotated[Path, typer.Option("--repository", "-r", help="Model repository to serve.")] = Path(
        "sidecars/repository"
    ),
    http_port: Annotated[int | None, typer.Option(help="HTTP port (default: a free one).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default: a free one).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Metrics port (default: a free one).")] = None,
    ready_timeout_s: Annotated[
        float, typer.Option(help="Longest wait for the server and its models to be ready.")
    ] = 60.0,
) -> None:
    """Start tritonserver on loopback, wait until it and its models are ready, print the endpoints, and return."""
    from scoring.launchers import triton_server

    state = triton_server.default_state_file()
    running = triton_server.load_state(state)
    if running is not None and triton_server.is_alive(running):
        _fail(
            ScoringError(
                f"a sidecar is already running (pid {running.pid}, grpc {running.grpc_url})",
                hint="scoring sidecar stop, then start again",
            )
        )
    try:
        handle = triton_server.start_server(
            repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            ready_timeout_s=ready_timeout_s,
        )
    except ScoringError as e:
        _fail(e)
        return
    triton_server.save_state(handle, state)
    out.print(
        f"sidecar ready (pid {handle.pid}): grpc {handle.grpc_url}  http {handle.http_url}  "
        + (f"metrics 127.0.0.1:{handle.metrics_port}" if handle.metrics_enabled else "metrics off (see the log)")
        + f"\nlog: {handle.log_path}\nstop it with: scoring sidecar stop"
    )


@sidecar_app.command("status")
def sidecar_status() -> None:
    """Show whether the sidecar started by `scoring sidecar start` is alive and ready. Exit 1 if not."""
    from scoring.launchers import triton_server

    handle = triton_server.load_state(triton_server.default_state_file())
    if handle is None or not triton_server.is_alive(handle):
        out.print("no sidecar running")
        raise typer.Exit(1)
    out.print(
        f"running (pid {handle.pid}): grpc {handle.grpc_url}  http {handle.http_url}  repository {handle.repository}"
    )


@sidecar_app.command("stop")
def sidecar_stop() -> None:
    """Stop the sidecar started by `scoring sidecar start` (SIGTERM, then SIGKILL after a timeout)."""
    from scoring.launchers import triton_server

    state = triton_server.default_state_file()
    handle = triton_server.load_state(state)
    if handle is None:
        out.print("no sidecar running")
        return
    triton_server.stop_server(handle)
    triton_server.clear_state(state)
    out.print(f"stopped (pid {handle.pid})")


cluster_app = typer.Typer(
    help="A Spark standalone cluster on loopback: a master and workers, each with its own Triton sidecar "
    "(docs/cluster.md).",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")
_CLUSTER_DIR_HELP = "Folder of the cluster's state and logs (default: $SCORING_CLUSTER_DIR, else .scoring/cluster)."


@cluster_app.command("up")
def cluster_up(
    workers: Annotated[int, typer.Option(help="Workers to start (one executor each).")] = 2,
    cores: Annotated[int, typer.Option(help="Cores of each worker.")] = 1,
    memory: Annotated[str, typer.Option(help="Memory of each worker (its executor's too).")] = "1g",
    triton: Annotated[
        Path | None, typer.Option(help="Job config whose model each worker's own Triton sidecar serves.")
    ] = None,
    state_dir: Annotated[Path | None, typer.Option(help=_CLUSTER_DIR_HELP)] = None,
) -> None:
    """Start the cluster and return once every worker (and sidecar) is ready; it runs until `scoring cluster down`.
    Prints the --set flags that run a job on it."""
    from scoring.deploy.cluster import Cluster, export_for_sidecars

    cluster = Cluster(state_dir)
    try:
        repository, models = (None, None)
        if triton is not None:
            repository, models = export_for_sidecars(triton, cluster.state_dir / "repository")
        cluster.up(workers, cores=cores, memory=memory, triton_repository=repository, triton_models=models)
    except ScoringError as e:
        _fail(e)
        return
    print(json.dumps(cluster.status(), indent=2))
    print("run a job on it: scoring run CONFIG " + " ".join(f"--set '{s}'" for s in cluster.run_overrides()))


@cluster_app.command("status")
def cluster_status(state_dir: Annotated[Path | None, typer.Option(help=_CLUSTER_DIR_HELP)] = None) -> None:
    """Show the master, the workers (alive per the master, their executors) and their sidecars, as JSON. Exit 1 when
    no cluster runs or a part of it is down."""
    from scoring.deploy.cluster import Cluster

    cluster = Cluster(state_dir)
    if cluster.state() is None:
        out.print(f"no cluster running from {cluster.state_dir}")
        raise typer.Exit(1)
    status = cluster.status()
    print(json.dumps(status, indent=2))
    sidecars = [w["triton"] for w in status["workers"] if w["triton"] is not None]
    if not (
        status["master_alive"] and all(w["alive"] for w in status["workers"]) and all(s["ready"] for s in sidecars)
    ):
        raise typer.Exit(1)


@cluster_app.command("sets")
def cluster_sets(state_dir: Annotated[Path | None, typer.Option(help=_CLUSTER_DIR_HELP)] = None) -> None:
    """Print the --set flags that point a job at the running cluster, for a shell:
    scoring run CONFIG $(scoring cluster sets)."""
    from scoring.deploy.cluster import Cluster

    try:
        sets = Cluster(state_dir).run_overrides()
    except ScoringError as e:
        _fail(e)
        return
    print(" ".join(f"--set {s}" for s in sets))


@cluster_app.command("down")
def cluster_down(state_dir: Annotated[Path | None, typer.Option(help=_CLUSTER_DIR_HELP)] = None) -> None:
    """Stop every process of the cluster by pid (workers and their executors, master, sidecars). Exit 1 if any is
    left."""
    from scoring.deploy.cluster import Cluster

    cluster = Cluster(state_dir)
    if cluster.state() is None:
        out.print(f"no cluster running from {cluster.state_dir}")
        return
    left = cluster.down()
    if left:
        _fail(ScoringError(f"processes of the cluster still run: {left}", hint="kill them by pid"))
    out.print("stopped: nothing of the cluster runs")


render_app = typer.Typer(help="Render what a platform team applies to run a job elsewhere.", no_args_is_help=True)
app.add_typer(render_app, name="render")


@render_app.command("k8s")
def render_k8s(
    configs: Annotated[list[Path], typer.Argument(help="YAML job config(s), e.g. conf/jobs/nightly.yaml.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the manifests into (created).")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
    image: Annotated[
        str | None, typer.Option(help="Driver/executor image (default: kubernetes.image, else $SCORING_IMAGE).")
    ] = None,
) -> None:
    """Write each job's Kubernetes manifests: a ConfigMap with its config and a SparkApplication (spark-operator v2)
    whose pods carry the Triton sidecar inline. The model alias is resolved now, once: the run scores that version.
    No environment variable's value is written: `${VAR}` stays a reference, expanded in the pods, which get it from
    a Secret (kubernetes.secret_env / env_from_secrets). Apply them with `kubectl apply -f OUT`; see
    docs/kubernetes.md."""
    from scoring import load_job_config
    from scoring.deploy import kubernetes

    try:
        rendered = [
            kubernetes.render(
                load_job_config(config, set_ or [], keep_env_refs=True), config, overrides=set_ or [], image=image
            )
            for config in configs
        ]
        written = kubernetes.write(rendered, out_dir)
    except ScoringError as e:
        _fail(e)
        return
    for item in rendered:
        out.print(f"{item.name} ({item.namespace}): {item.model.requested_uri} pinned to {item.model.uri}")
    for path in written:
        out.print(f"  wrote {path}")


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Rows in the demo input table.")] = 100_000,
    fresh: Annotated[bool, typer.Option("--fresh", help="Recreate the demo lake and model.")] = False,
    config: Annotated[Path, typer.Option(help="Job config to run on the demo lake.")] = Path("conf/jobs/demo.yaml"),
) -> None:
    """Create a demo lake (.demo/lake/features, partitioned by ds), train and register a demo model
    (models:/churn@champion in .demo/mlflow.db), then run the demo job and print its summary."""
    from scoring import load_job_config
    from scoring.engine.progress import default_reporter
    from scoring.modes.batch import run as run_batch
    from scoring.tools.demo import DEMO_DIR, create_demo

    try:
        made = create_demo(DEMO_DIR, rows, force=fresh)
        err.print(f"demo lake: {made['input_table']}   registry: {made['tracking_uri']}   model: {made['model']}")
        summary = run_batch(load_job_config(config), reporter=default_reporter())
    except ScoringError as e:
        _fail(e)
        return
    print_summary(summary)
    out.print(f"\nRead the predictions: scoring show {summary.output_table}   (or any Delta reader)")


@app.command()
def show(
    table: Annotated[str, typer.Argument(help="Path of a Delta table.")],
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 10,
) -> None:
    """Show a few rows and the commit history of a Delta table (read with delta-rs, no Spark)."""
    from scoring.adapters import deltalog

    try:
        snap = deltalog.snapshot(table)
        if snap is None:
            raise ScoringError(f"no Delta table at {table}", hint="pass the path of a Delta table")
        data = snap.dataset().head(limit).to_pandas()
        commits = deltalog.history(table, 5)
    except ScoringError as e:
        _fail(e)
        return
    out.print(f"[bold]{table}[/bold] version {snap.version}, {len(snap.columns)} columns", soft_wrap=True)
    text = data.to_string(index=False)
    if max(map(len, text.splitlines()), default=0) <= out.width:
        out.print(text, markup=False, highlight=False, soft_wrap=True)
    else:  # too wide for the terminal: one block per row, one line per column
        width = max(map(len, data.columns), default=0)
        for number, row in enumerate(data.itertuples(index=False), start=1):
            out.print(f"-- row {number} --", markup=False, highlight=False)
            for name, value in zip(data.columns, row, strict=True):
                shown = str(value) if len(str(value)) <= 120 else str(value)[:119] + "…"
                out.print(f"  {name:<{width}}  {shown}", markup=False, highlight=False, soft_wrap=True)
    out.print("\n[bold]history[/bold]")
    for commit in commits:
        line = f"  v{commit.version} {commit.operation} {commit.user_metadata or ''}".rstrip()
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def doctor() -> None:
    """Check what scoring needs: Python packages, Java, Spark with the Delta jars, and the MLflow registry."""
    from scoring.cli.doctor import run_checks

    ok = run_checks(out)
    raise typer.Exit(0 if ok else 1)


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
        _fail(ConfigError(f"--model {unknown}: choose from {list(ALL_MODELS)}"))
    sizes = rows or [1_000_000]
    if any(n < 1 for n in sizes):
        _fail(ConfigError(f"--rows {sizes}: each size must be at least 1"))
    try:
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
    except ScoringError as e:
        _fail(e)
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
    from scoring.tools.bench_stream import paths_for, run_bench_stream

    try:
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
    except ScoringError as e:
        _fail(e)
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
    from scoring.tools.bench_serve import run_bench_serve, scenarios_for

    try:
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
    except ScoringError as e:
        _fail(e)
    out.print(f"written to {output}")


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="YAML job config; its serve: section (optional) tunes the service.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default: serve.port, 8080; 0: any).")] = None,
) -> None:
    """Serve the job's scores over HTTP: precomputed scores of the batch output table (loaded with delta-rs, reloaded
    when the table gets a new version), live inference through the job's runtime (Triton or embedded) for keys
    without a current score, version-aware (a score by another model version than the alias's is stale).

    Routes: GET /v1/scores/{key} (composite keys: one path segment per key column, in input.key order);
    POST /v1/score ({"key": ..., "features": {...}} or a list of them); POST /v2/models/{name}/infer and
    /v2/models/{name}/versions/{v}/infer
    (KServe v2 / Open Inference Protocol); /v2/health/live, /v2/health/ready, /metrics, /v1/status, /docs.

    Config keys: serve.host, serve.port, serve.table, serve.partition, serve.index (memory | redis), serve.redis.*,
    serve.refresh_interval_s, serve.alias_check_interval_s, serve.max_age_s, serve.serve_stale, serve.live,
    serve.live_fallback, serve.batch_window_ms, serve.max_batch_rows, serve.deadline_s, serve.breaker_failures,
    serve.breaker_reset_s, serve.max_body_bytes, serve.max_batch_keys, serve.request_receive_timeout_s,
    serve.max_connections, serve.auth_token_env. See the README's Online serving section.

    Runs until Ctrl-C or SIGTERM (requests in flight finish first). Exit status: 0 when stopped; 1 when there is no
    output table to serve; 2 on a bad config; 75 when Redis or the registry is unreachable at start.
    """
    from scoring import load_job_config
    from scoring.engine.progress import LogReporter
    from scoring.modes.http_api import bind, serve_forever
    from scoring.modes.online import OnlineService

    try:
        job = load_job_config(config, set_ or [])
        service = OnlineService(job, reporter=LogReporter()).start()
    except ScoringError as e:
        _fail(e)
        return
    settings = service.serve
    listen_host = host or settings.host
    listen_port = settings.port if port is None else port

    try:
        sock = bind(listen_host, listen_port)
    except OSError as e:
        service.close()
        _fail(
            ConfigError(
                f"cannot listen on {listen_host}:{listen_port}: {e.strerror or e}",
                hint="choose another --port (or serve.port), or stop what listens there",
            )
        )
        return
    model = service.model
    err.print(
        f"serving {job.name} on http://{listen_host}:{sock.getsockname()[1]}: model {model.uri} (from "
        f"{job.model.uri}); index {settings.index}, table {service.table} version {service.index_version}; live "
        f"{job.runtime.backend if settings.live else 'off'}. Ctrl-C to stop.",
        highlight=False,
        soft_wrap=True,
    )
    try:
        serve_forever(service, sock)
    finally:
        service.close()
    err.print("stopped", highlight=False)


@app.command("publish-online")
def publish_online(
    config: Annotated[Path, typer.Argument(help="YAML job config: output.table (or serve.table) and serve.redis.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Load the job's precomputed scores into Redis for `scoring serve` with serve.index: redis: every key of the
    table's latest version (the newest row per key, or serve.partition's rows), under serve.redis.prefix, then switch
    readers to it in one step. Idempotent per table version: publishing a version already published writes nothing.
    A publish that is interrupted leaves the previous version served; running it again completes it."""
    import json

    from scoring import load_job_config
    from scoring.engine.progress import default_reporter
    from scoring.modes.online import publish

    try:
        job = load_job_config(config, set_ or [])
        summary = publish(job, reporter=default_reporter())
    except ScoringError as e:
        _fail(e)
        return
    if as_json:
        out.print_json(json.dumps(summary))
        return
    verb = "published" if summary["published"] else "already published (nothing written)"
    out.print(
        f"{summary['table']} version {summary['table_version']}: {summary['keys']:,} keys {verb} to "
        f"{summary['url']} under {summary['prefix']} in {summary['elapsed_s']:.1f} s"
        + (f" (previous version {summary['previous_version']})" if summary.get("previous_version") is not None else ""),
        highlight=False,
    )


@app.command("demo-serve")
def demo_serve(
    config: Annotated[Path, typer.Option(help="Serve job config.")] = Path("conf/jobs/serve.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
) -> None:
    """Serve the demo's scores over HTTP for a moment and show a few requests with their answers: a key the batch
    job scored (precomputed), a key it never saw (scored live), and, after the model alias moves to a newly registered
    version, the same scored key gone stale (then scored live by the new version). Creates the demo lake, model and
    batch output first when they are missing; puts the alias back at the end."""
    from scoring.engine.progress import default_reporter
    from scoring.tools.demo import DEMO_DIR
    from scoring.tools.demo_serve import print_exchanges, run_demo_serve

    try:
        exchanges = run_demo_serve(DEMO_DIR, config, set_ or [], reporter=default_reporter())
    except ScoringError as e:
        _fail(e)
        return
    print_exchanges(out, exchanges)


@app.command("demo-stream")
def demo_stream(
    config: Annotated[Path, typer.Option(help="Stream job config (Delta -> Delta).")] = Path("conf/jobs/stream.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=_SET_HELP)] = None,
    appends: Annotated[int, typer.Option(help="Commits appended to the source while the stream runs.")] = 5,
    rows: Annotated[int, typer.Option(help="Rows per appended commit.")] = 1_000,
    every_s: Annotated[float, typer.Option(help="Seconds between appended commits.")] = 1.0,
) -> None:
    """Stream new rows of a Delta table through the demo model for a few seconds: create the source table (and the
    demo model, as `scoring demo`), start the stream of conf/jobs/stream.yaml, append rows, stop it cleanly, and show
    the scored rows with their lineage, the commits and the lag."""
    from scoring.engine.progress import default_reporter
    from scoring.tools.demo import DEMO_DIR
    from scoring.tools.demo_stream import print_result, run_demo_stream

    try:
        result = run_demo_stream(
            DEMO_DIR,
            config,
            set_ or [],
            appends=appends,
            rows_per_append=rows,
            every_s=every_s,
            reporter=default_reporter(),
        )
    except ScoringError as e:
        _fail(e)
        return
    print_stream_summary(result.record)
    print_result(out, result)


def main() -> None:
    """Run the CLI. A ScoringError is a plain message (each command turns it into its exit code); anything else that
    escapes is a bug or an environment problem: one plain line, exit 1, the traceback only with --debug."""
    try:
        app()
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the one place where every error becomes an exit code
        if _DEBUG:
            raise
        from scoring.errors import from_spark_exception

        found = from_spark_exception(e)
        if found is not None:
            err.print(f"[bold red]error:[/bold red] {found}", highlight=False, soft_wrap=True)
            sys.exit(exit_code_for(found))
        first = (str(e).strip().splitlines() or [""])[0][:500]
        err.print(
            f"[bold red]error:[/bold red] unexpected {type(e).__name__}: {first}\n"
            "  how to fix: run again with --debug for the full traceback, and report it if it is not your setup",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
