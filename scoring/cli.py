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

from scoring.errors import ScoringError

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
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("scoring").setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("py4j", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of plain error messages.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug
    _setup_logging(verbose or debug)


def _fail(e: ScoringError) -> None:
    if _DEBUG:
        raise e
    err.print(f"[bold red]error:[/bold red] {e}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(e.exit_code)


def print_summary(summary) -> None:
    table = Table(title=f"scoring run {summary.run_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    status = "committed" if summary.committed else "already committed by this run id: nothing written again"
    rows = [
        ("status", status),
        ("model", f"{summary.model_name} version {summary.model_version} ({summary.requested_model_uri})"),
        ("input", f"{summary.input_table} @ version {summary.input_version}"),
        ("output", f"{summary.output_table} @ version {summary.output_version} (was {summary.output_version_before})"),
        ("rows read", f"{summary.rows_read:,}"),
        ("rows written", f"{summary.rows_written:,}"),
        ("rows rejected", f"{summary.rows_rejected:,}"),
        ("predictions", ", ".join(summary.prediction_columns)),
        ("elapsed", f"{summary.elapsed_s:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in summary.timings_s.items()) + ")"),
        ("throughput", f"{summary.rows_per_s:,.0f} rows/s"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML job config, e.g. conf/jobs/demo.yaml.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            metavar="KEY=VALUE",
            help="Override a config key by its dotted path (repeatable), e.g. --set input.version=3 "
            "--set model.uri=models:/churn/2 --set \"input.where=ds = '2026-11-01'\". Values are YAML.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Score a Delta table with an MLflow model and write version-stamped predictions to Delta.

    Config keys: input.table, input.key, input.features, input.where, input.version, input.on_invalid_rows;
    model.uri, model.tracking_uri, model.registry_uri; runtime.backend, runtime.batch_rows, runtime.embedded.threads;
    output.table, output.partition_by; spark.master, spark.conf; name, run_id. See the README for each.

    Exit status: 0 on success, 1 on bad input or a failed run (the output table is left as it was), 2 on a bad config.
    """
    from scoring import load_job_config
    from scoring.modes.batch import run as run_batch
    from scoring.progress import default_reporter

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


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(help="YAML job config.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Config override.")] = None,
    master: Annotated[str | None, typer.Option(help="Spark master, e.g. local[4], yarn, k8s://...")] = None,
    print_only: Annotated[bool, typer.Option("--print", help="Print the spark-submit command instead of running it.")] = False,
) -> None:
    """Run a job through spark-submit (the way Airflow's SparkSubmitOperator does), with the Delta jars as --packages."""
    import shlex
    import subprocess

    from scoring.adapters.spark import spark_submit_command, spark_submit_env

    command = spark_submit_command(str(config), set_ or [], master)
    if print_only:
        print(shlex.join(command))
        return
    raise typer.Exit(subprocess.call(command, env=spark_submit_env()))


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Rows in the demo input table.")] = 100_000,
    fresh: Annotated[bool, typer.Option("--fresh", help="Recreate the demo lake and model.")] = False,
    config: Annotated[Path, typer.Option(help="Job config to run on the demo lake.")] = Path("conf/jobs/demo.yaml"),
) -> None:
    """Create a demo lake (.demo/lake/features, partitioned by ds), train and register a demo model
    (models:/churn@champion in .demo/mlflow.db), then run the demo job and print its summary."""
    from scoring import load_job_config
    from scoring.demo import DEMO_DIR, create_demo
    from scoring.modes.batch import run as run_batch
    from scoring.progress import default_reporter

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
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table)
    except TableNotFoundError:
        _fail(ScoringError(f"no Delta table at {table}", hint="pass the path of a Delta table"))
        return
    data = dt.to_pyarrow_table().slice(0, limit).to_pandas()
    out.print(f"[bold]{table}[/bold] version {dt.version()}")
    out.print(data.to_string(index=False))
    out.print("\n[bold]history[/bold]")
    for entry in dt.history(5):
        out.print(f"  v{entry.get('version')} {entry.get('operation')} {entry.get('userMetadata', '')}")


@app.command()
def doctor() -> None:
    """Check what scoring needs: Python packages, Java, Spark with the Delta jars, and the MLflow registry."""
    from scoring.doctor import run_checks

    ok = run_checks(out)
    raise typer.Exit(0 if ok else 1)


@app.command()
def bench(
    rows: Annotated[int, typer.Option(help="Rows of generated input (20 float features).")] = 1_000_000,
    repeat: Annotated[int, typer.Option(help="Repetitions of each path; medians are reported.")] = 5,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON results.")] = Path(
        "bench-results.json"
    ),
    workdir: Annotated[Path, typer.Option(help="Scratch directory for tables and the registry.")] = Path(".bench"),
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these paths (repeatable): jvm-copy, floor, embedded, spark_udf.")
    ] = None,
) -> None:
    """Measure rows/s of the engine against the alternatives, in one run: a pure-JVM copy, the no-model floor
    (read -> Python identity -> write), the embedded engine, and mlflow.pyfunc.spark_udf on the same model."""
    from scoring.bench import run_bench

    try:
        run_bench(rows=rows, repeat=repeat, output=output, workdir=workdir, only=only, console=out)
    except ScoringError as e:
        _fail(e)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
