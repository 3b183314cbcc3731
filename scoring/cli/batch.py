"""Batch commands: `scoring plan` (a dry run), `scoring run` (score a table) and `scoring show` (read one back)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.app import SET_HELP, app, out
from scoring.cli.render import print_summary
from scoring.errors import ScoringError


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="YAML job config, e.g. conf/jobs/demo.yaml.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON on stdout.")] = False,
) -> None:
    """A dry run: resolve the model, pin the input snapshot, check the job, count what would be scored, and show
    which output partitions and how many output rows a run would replace. Writes nothing.

    Exit status: as `scoring run` (0 ok, 1 a run would fail, 2 a bad config).
    """
    from scoring import load_job_config
    from scoring.modes.batch import plan as plan_batch

    job = load_job_config(config, set_ or [])
    the_plan = plan_batch(job, dry_run=True)
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
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
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

    job = load_job_config(config, set_ or [])
    summary = run_batch(job, reporter=default_reporter())
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        print_summary(summary)


@app.command()
def show(
    table: Annotated[str, typer.Argument(help="Path of a Delta table.")],
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 10,
) -> None:
    """Show a few rows and the commit history of a Delta table (read with delta-rs, no Spark)."""
    from scoring.adapters import deltalog

    snap = deltalog.snapshot(table)
    if snap is None:
        raise ScoringError(f"no Delta table at {table}", hint="pass the path of a Delta table")
    data = snap.dataset().head(limit).to_pandas()
    commits = deltalog.history(table, 5)
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
