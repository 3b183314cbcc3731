"""The driver/executor image recipe (``sidecars/k8s/Dockerfile``), checked without a container engine: no image is
built here. What is checked: the instructions parse, every COPY source exists in the build context, every ``pip
install`` is constrained and everything it installs is pinned by ``constraints.txt`` (the whole dependency closure),
the image puts the files where the rendered manifests look for them, and its entry point keeps Spark's pod contract.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from scoring.deploy import kubernetes

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "sidecars" / "k8s" / "Dockerfile"
ENTRYPOINT = ROOT / "sidecars" / "k8s" / "entrypoint.sh"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, rest = text.strip().partition(" ")
        assert keyword.isupper(), f"not a Dockerfile instruction: {text!r}"
        out.append((keyword, rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


def _args(step: str) -> dict[str, str]:
    return dict(re.findall(r"ARG (\w+)=(\S+)", step))


def constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _environment(extra: str = "") -> dict[str, str]:
    """Markers as the image evaluates them: Linux, CPython 3.11."""
    env = default_environment()
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix", python_version="3.11", extra=extra)
    env.update(implementation_name="cpython", platform_python_implementation="CPython")
    return env


def unpinned_closure(requirements: list[str], pins: dict[str, str]) -> list[str]:
    """Every problem in the closure of `requirements` under `pins`: a distribution with no pin, or a pin that does
    not satisfy what asks for it. The closure is read from the metadata of the pinned versions (installed here from
    the same constraints)."""
    problems, seen = [], set()
    queue = [(Requirement(text), "pyproject.toml", "") for text in requirements]
    while queue:
        requirement, wanted_by, extra = queue.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(_environment(extra)):
            continue
        name = canonicalize_name(requirement.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement.name} (wanted by {wanted_by}) is not pinned in constraints.txt")
            continue
        if not requirement.specifier.contains(Version(pin), prereleases=True):
            problems.append(f"{name}=={pin} does not satisfy {requirement} (wanted by {wanted_by})")
        for wanted_extra in sorted(requirement.extras) or [""]:
            if (name, wanted_extra) in seen:
                continue
            seen.add((name, wanted_extra))
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name}=={pin} is pinned but not installed here: cannot read its requirements")
                continue
            if canonicalize_name(dist.version) != canonicalize_name(pin):
                problems.append(f"{name} installed here is {dist.version}, constraints.txt pins {pin}")
            for text in dist.requires or ():
                queue.append((Requirement(text), f"{name}[{wanted_extra}]" if wanted_extra else name, wanted_extra))
    return sorted(set(problems))


def test_the_dockerfile_parses_and_starts_from_a_pinned_python_of_the_supported_minor_version():
    steps = instructions()
    assert steps[0][0] == "ARG" and steps[1] == ("FROM", "${PYTHON_IMAGE}")
    base = _args(f"ARG {steps[0][1]}")["PYTHON_IMAGE"]
    name, _, tag = base.partition(":")
    assert name == "python" and tag and tag != "latest"
    minor = tag.split("-")[0]
    assert f">={minor}" in PYPROJECT["project"]["requires-python"], (minor, PYPROJECT["project"]["requires-python"])
    env = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    assert f"SPARK_HOME=/usr/local/lib/python{minor}/site-packages/pyspark" in env
    assert [rest for keyword, rest in steps if keyword == "USER"] == ["185"]  # not root
    assert steps[-1] == ("ENTRYPOINT", '["/opt/entrypoint.sh"]')
    assert any("openjdk-17-jre-headless" in rest for keyword, rest in steps if keyword == "RUN")  # Java 17


def test_the_baked_jars_leave_out_what_spark_ships_in_another_version():
    """Delta 4.4 resolves its own hadoop-client 3.4.2, parquet 1.16, jackson 2.13 (a real resolution's names): Spark's
    4.2 copies win at run time, so only the artifacts Spark lacks go into the image's jars/ folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bake_jars", ROOT / "sidecars" / "k8s" / "bake_jars.py")
    bake_jars = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bake_jars)
    resolved = [
        "io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "io.delta_delta-storage-4.4.0.jar",
        "org.apache.hadoop_hadoop-client-api-3.4.2.jar",
        "org.apache.parquet_parquet-hadoop-1.16.0.jar",
        "com.fasterxml.jackson.core_jackson-core-2.13.5.jar",
        "com.github.luben_zstd-jni-1.5.7-3.jar",
        "io.unitycatalog_unitycatalog-client-0.6.0.jar",
    ]
    import pyspark

    shipped = [p.name for p in (Path(pyspark.__file__).parent / "jars").glob("*.jar")]
    assert bake_jars.jars_to_add(resolved, shipped) == [
        "io.delta_delta-spark_4.2_2.13-4.4.0.jar",
        "io.delta_delta-storage-4.4.0.jar",
        "io.unitycatalog_unitycatalog-client-0.6.0.jar",
    ]
    assert bake_jars.artifact("delta-spark_4.2_2.13-4.4.0.jar") == "delta-spark_4.2_2.13"
    assert bake_jars.artifact("com.github.luben_zstd-jni-1.5.7-3.jar", ivy=True) == "zstd-jni"
    steps = [rest for keyword, rest in instructions() if keyword == "RUN" and "bake_jars.py" in rest]
    assert steps == ["python /tmp/bake_jars.py && rm -rf /tmp/bake_jars.py /tmp/spark-*"]


def test_every_copy_source_is_in_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    for keyword, rest in instructions():
        if keyword != "COPY":
            continue
        *sources, _target = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert f"{source}/" not in ignored and source not in ignored


def test_every_pip_install_is_constrained_and_its_whole_closure_is_pinned():
    pins = constraints()
    installs = [rest for keyword, rest in instructions() if keyword == "RUN" and "pip install" in rest]
    assert installs, "the image installs nothing with pip"
    for step in installs:
        words = shlex.split(step)
        assert "--constraint" in words and words[words.index("--constraint") + 1] == "constraints.txt", step
        targets = [w for w in words[words.index("install") + 1 :] if not w.startswith("-") and w != "constraints.txt"]
        assert targets == [".[triton]"], f"{step}: install the project and its triton extra (pinned), nothing unpinned"
    wanted = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["triton"]
    problems = unpinned_closure(wanted, pins)
    assert problems == [], "\n".join(problems)


def test_every_extra_is_pinned_too():
    """``make setup`` installs ``.[dev]`` (every extra, the test tools among them) with the same constraints."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name, wanted in extras.items():
        if name == "dev":
            continue
        assert unpinned_closure(wanted, constraints()) == [], name
    assert extras["dev"] == [f"scoring[{','.join(n for n in extras if n != 'dev')}]"]


def test_the_closure_check_finds_a_missing_or_wrong_pin():
    pins = constraints()
    assert unpinned_closure(["pyyaml>=6"], {k: v for k, v in pins.items() if k != "pyyaml"}) == [
        "pyyaml (wanted by pyproject.toml) is not pinned in constraints.txt"
    ]
    assert "does not satisfy pyyaml<6" in unpinned_closure(["pyyaml<6"], pins)[0]


def test_the_image_holds_what_the_manifests_use():
    steps = instructions()
    workdir, copied = None, {}
    for keyword, rest in steps:
        if keyword == "WORKDIR":
            workdir = rest
        elif keyword == "COPY":
            *sources, target = shlex.split(rest)
            for source in sources:
                copied[source] = target if target.startswith("/") else f"{workdir}/{target.removeprefix('./')}"
    assert copied["scoring"] == f"{kubernetes.APP_ROOT}/scoring"  # mainApplicationFile's spark_entry.py
    assert (ROOT / kubernetes.ENTRY_FILE).is_file()
    assert PYPROJECT["project"]["scripts"]["scoring"] == "scoring.cli:main"  # the export init container's command
    assert copied["sidecars/k8s/entrypoint.sh"] == "/opt/entrypoint.sh"
    # the sparkVersion the manifests declare is the Spark the image installs (the pinned pyspark wheel)
    import pyspark

    assert constraints()["pyspark"] == pyspark.__version__


@pytest.fixture
def fake_spark(tmp_path):
    """SPARK_HOME, JAVA_HOME and tini stand-ins that print the command they were given."""
    for path in ("spark/bin/spark-submit", "java/bin/java", "tini"):
        tool = tmp_path / path
        tool.parent.mkdir(parents=True, exist_ok=True)
        skip = 'shift 2; exec "$@"' if path == "tini" else f'printf "%s\\n" "{Path(path).name}" "$@"'
        tool.write_text(f"#!/usr/bin/env bash\n{skip}\n")
        tool.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "SPARK_HOME": str(tmp_path / "spark"),
        "JAVA_HOME": str(tmp_path / "java"),
        "SCORING_TINI": str(tmp_path / "tini"),
    }
    return env


def _entry(env, *args) -> list[str]:
    done = subprocess.run([str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.splitlines()


def test_the_entry_point_starts_the_driver_as_spark_expects(fake_spark):
    env = {**fake_spark, "SPARK_DRIVER_BIND_ADDRESS": "10.0.0.5"}
    assert _entry(env, "driver", "--properties-file", "/opt/spark/conf/spark.properties", "local:///app.py") == [
        "spark-submit",
        "--conf",
        "spark.driver.bindAddress=10.0.0.5",
        "--conf",
        "spark.executorEnv.SPARK_DRIVER_POD_IP=10.0.0.5",
        "--deploy-mode",
        "client",
        "--properties-file",
        "/opt/spark/conf/spark.properties",
        "local:///app.py",
    ]


def test_the_entry_point_starts_an_executor_as_spark_expects(fake_spark):
    env = {
        **fake_spark,
        "SPARK_EXECUTOR_MEMORY": "8192m",
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@driver:7078",
        "SPARK_EXECUTOR_ID": "3",
        "SPARK_EXECUTOR_CORES": "4",
        "SPARK_APPLICATION_ID": "spark-1",
        "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
        "SPARK_RESOURCE_PROFILE_ID": "0",
        "SPARK_EXECUTOR_POD_NAME": "scoring-nightly-exec-3",
        "SPARK_JAVA_OPT_0": "-Dspark.driver.port=7078",
    }
    command = _entry(env, "executor")
    assert command[:4] == ["java", "-Dspark.driver.port=7078", "-Xms8192m", "-Xmx8192m"]
    assert command[command.index("-cp") + 1].startswith(f"{fake_spark['SPARK_HOME']}/jars/*")
    assert command[command.index("-cp") + 2] == "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"
    flags = dict(zip(command[-14::2], command[-13::2], strict=True))
    assert flags == {
        "--driver-url": "spark://CoarseGrainedScheduler@driver:7078",
        "--executor-id": "3",
        "--cores": "4",
        "--app-id": "spark-1",
        "--hostname": "10.0.0.9",
        "--resourceProfileId": "0",
        "--podName": "scoring-nightly-exec-3",
    }


def test_the_entry_point_runs_any_other_command_as_given(fake_spark):
    assert _entry(fake_spark, "echo", "scoring", "export") == ["scoring export"]
