"""Triton and cluster commands: `scoring export` (a model into a Triton repository), `scoring sidecar ...` (a local
Triton server) and `scoring cluster ...` (a Spark standalone cluster on loopback, a sidecar per worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from scoring.cli.app import app, group, out
from scoring.errors import ConfigError, ScoringError, require_extra


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
    require_extra("triton", "scoring export")
    from scoring import load_job_config
    from scoring.adapters.registry import resolve_model
    from scoring.adapters.triton_export import export_model
    from scoring.config import TritonModelConfig

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
    state = "exported" if result.changed else "already exported (nothing written)"
    out.print(f"{ref.uri} -> {result.path}/{result.version} as {result.model_name} ({result.target}): {state}")


sidecar_app = group("sidecar", "A local Triton Inference Server (the sidecar) serving a model repository.")


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
    require_extra("triton", "scoring sidecar start")
    from scoring.launchers import triton_server

    state = triton_server.default_state_file()
    running = triton_server.load_state(state)
    if running is not None and triton_server.is_alive(running):
        raise ScoringError(
            f"a sidecar is already running (pid {running.pid}, grpc {running.grpc_url})",
            hint="scoring sidecar stop, then start again",
        )
    handle = triton_server.start_server(
        repository,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        ready_timeout_s=ready_timeout_s,
    )
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


cluster_app = group(
    "cluster",
    "A Spark standalone cluster on loopback: a master and workers, each with its own Triton sidecar (docs/cluster.md).",
)
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
    repository, models = (None, None)
    if triton is not None:
        repository, models = export_for_sidecars(triton, cluster.state_dir / "repository")
    cluster.up(workers, cores=cores, memory=memory, triton_repository=repository, triton_models=models)
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

    sets = Cluster(state_dir).run_overrides()
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
        raise ScoringError(f"processes of the cluster still run: {left}", hint="kill them by pid")
    out.print("stopped: nothing of the cluster runs")
