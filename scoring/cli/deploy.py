"""Deployment commands: `scoring submit` (a job through spark-submit) and `scoring render k8s` (its manifests)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.app import SET_HELP, app, group, out


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


render_app = group("render", "Render what a platform team applies to run a job elsewhere.")


@render_app.command("k8s")
def render_k8s(
    configs: Annotated[list[Path], typer.Argument(help="YAML job config(s), e.g. conf/jobs/nightly.yaml.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the manifests into (created).")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help=SET_HELP)] = None,
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

    rendered = [
        kubernetes.render(
            load_job_config(config, set_ or [], keep_env_refs=True), config, overrides=set_ or [], image=image
        )
        for config in configs
    ]
    written = kubernetes.write(rendered, out_dir)
    for item in rendered:
        out.print(f"{item.name} ({item.namespace}): {item.model.requested_uri} pinned to {item.model.uri}")
    for path in written:
        out.print(f"  wrote {path}")
