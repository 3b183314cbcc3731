"""The core install: `pip install -c constraints.txt scoring` (no extra) into a fresh virtualenv runs a batch job with
the embedded ONNX backend, imports no optional library on the way, and a command that needs an extra says which.

The virtualenv holds the core dependencies only and is cached under ~/.cache/scoring/core-venv-<hash of
pyproject.toml and constraints.txt> (SCORING_CORE_VENV_DIR overrides the folder), so that runs on the same machine
re-use it; the project itself is reinstalled into it at every run, from a copy of the working tree. pip's own cache is
used. The data (a Delta table, a registered ONNX model) is made here, by the full development install."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.integration.conftest import FEATURES, features_of, read_delta

ROOT = Path(__file__).resolve().parents[2]
INSTALL_FILES = ("pyproject.toml", "constraints.txt")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TOOL_EXTRAS = {"test", "dev"}

# Libraries only an extra installs: none of them may be imported by `import scoring` or a batch run. Those the core
# install has anyway (MLflow brings fastapi, uvicorn, starlette, matplotlib and scikit-learn) are checked as imports.
OPTIONAL_MODULES = (
    "tritonclient", "pytriton", "fastapi", "starlette", "uvicorn", "orjson", "redis", "httpx", "confluent_kafka",
    "prometheus_client", "airflow", "kubernetes", "great_expectations", "papermill", "ipykernel", "matplotlib",
    "tqdm", "sklearn", "skl2onnx",
)  # fmt: skip


def _cache_root() -> Path:
    return Path(os.environ.get("SCORING_CORE_VENV_DIR") or Path.home() / ".cache" / "scoring")


def _install_hash() -> str:
    digest = hashlib.sha256()
    for name in INSTALL_FILES:
        digest.update(name.encode() + b"\0" + (ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def _source_copy(target: Path) -> Path:
    """What a user's `pip install` sees: the package and its metadata, copied so that the build's own files
    (build/, *.egg-info) stay out of the working tree."""
    target.mkdir(parents=True)
    for name in (*INSTALL_FILES, "README.md"):
        shutil.copy2(ROOT / name, target / name)
    ignore = shutil.ignore_patterns("__pycache__", "target", "*.pyc")
    shutil.copytree(ROOT / "scoring", target / "scoring", ignore=ignore)
    return target


def _env(venv: Path) -> dict[str, str]:
    """A clean environment for the core venv: nothing of the development venv on PATH, Spark's Python workers
    started from the core venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "SPARK_HOME", "PYTHONHOME"}}
    dev_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(dev_bin)]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env["VIRTUAL_ENV"] = str(venv)
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = str(venv / "bin" / "python")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _pip(venv: Path, *args: str, timeout: float) -> None:
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args]
    done = subprocess.run(command, env=_env(venv), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"core-venv-{_install_hash()}"
    source = _source_copy(tmp_path_factory.mktemp("core-install") / "scoring-src")
    with open(root / "core-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator at a time; the others wait and re-use it
        for stale in root.glob("core-venv-*"):
            if stale.is_dir() and stale != venv:
                shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        cached = (venv / ".core-installed").exists()
        if not cached:
            shutil.rmtree(venv, ignore_errors=True)
            # never --system-site-packages: the core venv sees only what the core install put there
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            _pip(venv, "-c", str(source / "constraints.txt"), str(source), timeout=1500)
            (venv / ".core-installed").write_text(_install_hash())
        # this run's code, always: the cached venv holds the dependencies, the project is reinstalled
        _pip(venv, "--no-deps", "--force-reinstall", str(source), timeout=600)
        print(
            f"core venv {'re-used' if cached else 'created'} at {venv} in {time.monotonic() - started:.0f} s",
            file=sys.stderr,
        )
    return venv


def _run_in(venv: Path, args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(venv), capture_output=True, text=True, timeout=timeout)


def _installed(venv: Path) -> dict[str, list[str]]:
    """Each distribution in `venv` -> the distributions it requires unconditionally (no extra, no marker that fails)."""
    code = (
        "import json\n"
        "from importlib import metadata\n"
        "from packaging.requirements import Requirement\n"
        "out = {}\n"
        "for dist in metadata.distributions():\n"
        "    reqs = [Requirement(r) for r in dist.requires or ()]\n"
        "    out[dist.metadata['Name']] = [r.name for r in reqs if r.marker is None or r.marker.evaluate({'extra': ''})]\n"
        "print(json.dumps(out))\n"
    )
    done = _run_in(venv, [str(venv / "bin" / "python"), "-c", code], cwd=venv, timeout=120)
    assert done.returncode == 0, done.stderr
    return {canonicalize_name(k): [canonicalize_name(r) for r in v] for k, v in json.loads(done.stdout).items()}


def test_the_core_install_has_no_extras_package_but_what_a_core_dependency_brings(core_venv):
    installed = _installed(core_venv)
    assert "scoring" in installed and "pyspark" in installed and "deltalake" in installed
    wanted_by_core = {r for name, requires in installed.items() for r in requires if name != "scoring"}
    for extra, requirements in PROJECT["optional-dependencies"].items():
        if extra in TOOL_EXTRAS:
            continue
        for text in requirements:
            name = canonicalize_name(Requirement(text).name)
            assert name not in installed or name in wanted_by_core, f"{name} (extra {extra}) is in the core install"
    for name in ("tritonclient", "nvidia-pytriton", "orjson", "redis", "confluent-kafka", "prometheus-client",
                 "apache-airflow", "great-expectations", "papermill", "skl2onnx", "pytest"):  # fmt: skip
        assert name not in installed, name
    # ... so that every extra is missing in part, and require_extra says so for each
    code = "from scoring.errors import EXTRAS, missing_modules\nprint(sorted(e for e in EXTRAS if missing_modules(e)))"
    done = _run_in(core_venv, [str(core_venv / "bin" / "python"), "-c", code], cwd=core_venv, timeout=120)
    assert done.returncode == 0, done.stderr
    from scoring.errors import EXTRAS

    assert json.loads(done.stdout.replace("'", '"')) == sorted(EXTRAS)


def _imported_by_the_core_dependencies(venv: Path) -> set[str]:
    """The optional modules that importing the core dependencies alone imports, without scoring."""
    code = (
        "import json, sys\n"
        "import deltalake, delta, mlflow, mlflow.onnx, mlflow.pyfunc, numpy, onnx, onnxruntime, pandas, pyarrow\n"
        "import pydantic, pyspark, pyspark.sql, rich, typer, yaml\n"
        f"print(json.dumps(sorted(m for m in {OPTIONAL_MODULES!r} if m in sys.modules)))\n"
    )
    done = _run_in(venv, [str(venv / "bin" / "python"), "-c", code], cwd=venv, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout))


def test_the_core_install_runs_a_batch_job_with_the_embedded_onnx_backend(core_venv, lake, registry, tmp_path):
    job = lake.job("core_install_out")
    job["model"]["tracking_uri"] = registry
    job["runtime"] = {"backend": "embedded"}
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(job))
    # the CLI as a user runs it, in the core venv; at exit, which optional libraries the run imported
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: sys.stderr.write('IMPORTED=' + json.dumps(sorted(m for m in {OPTIONAL_MODULES!r} "
        "if m in sys.modules)) + '\\n'))\n"
        "from scoring.cli import main\n"
        f"sys.argv = ['scoring', 'run', {str(config)!r}, '--json']\n"
        "main()\n"
    )
    done = _run_in(core_venv, [str(core_venv / "bin" / "python"), "-c", code], cwd=tmp_path)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    imported = [line.removeprefix("IMPORTED=") for line in done.stderr.splitlines() if line.startswith("IMPORTED=")]
    assert len(imported) == 1, done.stderr[-3000:]
    # scoring imports no optional library; what its core dependencies import themselves (`import mlflow` imports
    # fastapi and starlette, which MLflow installs) is theirs
    assert set(json.loads(imported[0])) <= _imported_by_the_core_dependencies(core_venv), done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["rows_written"] == lake.table.num_rows

    out = read_delta(lake.root / "core_install_out").sort_by("customer_id")
    src = lake.table.sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == src.column("customer_id").to_pylist()
    import mlflow

    model = mlflow.onnx.load_model(f"models:/onnx_clf/{summary['model_version']}")
    session = onnxruntime.InferenceSession(model.SerializeToString())
    label, proba = session.run(["label", "probabilities"], {"X": features_of(src).astype(np.float32)})
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    np.testing.assert_allclose(np.stack(out.column("probabilities").to_numpy(zero_copy_only=False)), proba, rtol=1e-6)
    assert len(FEATURES) == features_of(src).shape[1]


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["serve", "{config}"], "serve"),
        (["publish-online", "{config}"], "serve"),
    ],
)
def test_a_command_that_needs_an_extra_names_it_and_exits_as_a_config_error(core_venv, tmp_path, command, extra):
    config = tmp_path / "serve.yaml"
    shutil.copy2(ROOT / "conf" / "jobs" / "serve.yaml", config)
    args = [str(core_venv / "bin" / "scoring"), *(part.format(config=config) for part in command)]
    done = _run_in(core_venv, args, cwd=tmp_path, timeout=300)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output[-3000:]
    assert f"needs the `{extra}` extra: pip install 'scoring[{extra}]'" in output, output[-3000:]
