"""`scoring doctor`: check, one by one, what a run needs, and say how to fix what is missing."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import typer

from scoring.cli.app import app, out


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _packages() -> Check:
    wanted = [
        "pyspark",
        "delta-spark",
        "pyarrow",
        "mlflow",
        "onnxruntime",
        "tritonclient",
        "apache-airflow",
        "great-expectations",
        "deltalake",
    ]
    found, missing = [], []
    for name in wanted:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            missing.append(name)
    return Check(
        "python packages",
        not missing,
        ", ".join(found) if not missing else f"missing: {', '.join(missing)}",
        "run `make setup` (installs the pinned stack into .venv)",
    )


def _java() -> Check:
    java = shutil.which(
        "java", path=os.path.join(os.environ["JAVA_HOME"], "bin") if "JAVA_HOME" in os.environ else None
    )
    if java is None:
        return Check(
            "java", False, "no java on PATH", "install a JDK 17 or 21 (e.g. apt-get install openjdk-17-jdk-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    line = out[0] if out else "unknown"
    ok = any(f'"{v}' in line for v in ("17", "21"))
    return Check("java", ok, line, "Spark 4 needs Java 17 or 21; set JAVA_HOME")


def _spark_and_delta() -> Check:
    from scoring.adapters.spark import delta_package, get_session

    started = time.perf_counter()
    try:
        spark = get_session("local[1]", {"spark.ui.enabled": "false"})
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            spark.range(3).write.format("delta").save(tmp + "/t")
            n = spark.read.format("delta").load(tmp + "/t").count()
        spark.stop()
    except Exception as e:  # report whatever went wrong; this is a diagnostic
        return Check(
            "spark + delta",
            False,
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}",
            f"check Java and that Spark can resolve {delta_package()} (Maven Central, cached in ~/.ivy2.5.2)",
        )
    return Check(
        "spark + delta",
        n == 3,
        f"wrote and read a Delta table with {delta_package()} in {time.perf_counter() - started:.1f} s",
    )


def _registry() -> Check:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return Check(
            "mlflow registry",
            True,
            "MLFLOW_TRACKING_URI not set: jobs must set model.tracking_uri (the demo uses sqlite:///.demo/mlflow.db)",
        )
    try:
        from mlflow import MlflowClient

        names = [m.name for m in MlflowClient(tracking_uri=uri).search_registered_models(max_results=10)]
    except Exception as e:
        return Check(
            "mlflow registry",
            False,
            f"{uri}: {type(e).__name__}: {str(e)[:200]}",
            "check MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI and that the server is reachable",
        )
    return Check("mlflow registry", True, f"{uri}: {len(names)} registered model(s) {names}")


def _triton() -> Check:
    from scoring.launchers import triton_server

    try:
        binary = triton_server.find_tritonserver()
    except Exception as e:  # a ScoringError with its own hint
        return Check(
            "triton", False, str(e).splitlines()[0], "run `make setup` (nvidia-pytriton ships the local server)"
        )
    handle = triton_server.load_state()
    if handle is None:
        return Check("triton", True, f"local server binary {binary}; no sidecar running (scoring sidecar start)")
    if not triton_server.is_alive(handle) or not triton_server.server_ready(handle):
        return Check(
            "triton",
            False,
            f"the sidecar recorded in {triton_server.default_state_file()} (pid {handle.pid}) is not ready",
            "scoring sidecar stop, then scoring sidecar start",
        )
    return Check("triton", True, f"sidecar ready at grpc {handle.grpc_url}, http {handle.http_url}")


CHECKS: list[Callable[[], Check]] = [_packages, _java, _spark_and_delta, _registry, _triton]


def run_checks(console) -> bool:
    ok = True
    for check in CHECKS:
        result = check()
        ok &= result.ok
        mark = "[green]ok[/green]  " if result.ok else "[red]FAIL[/red]"
        console.print(f"{mark} {result.name}: {result.detail}", highlight=False)
        if not result.ok and result.fix:
            console.print(f"      how to fix: {result.fix}", highlight=False)
    return ok


@app.command()
def doctor() -> None:
    """Check what scoring needs: Python packages, Java, Spark with the Delta jars, and the MLflow registry."""
    ok = run_checks(out)
    raise typer.Exit(0 if ok else 1)
