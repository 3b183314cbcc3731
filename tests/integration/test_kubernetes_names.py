"""Names and keys in rendered manifests, judged by Kubernetes itself: apimachinery's validation functions, the ones the
API server calls, through a small Go program (``tests/k8s_names/``) built once per machine.

- ``scoring.config.k8s_names`` accepts exactly what apimachinery accepts, on a few thousand adversarial strings;
- every name and key in the manifests rendered for the golden jobs, and for configs built to stress the rules, passes
  apimachinery (read back from the written YAML files, found by a walk of its own);
- what the renderer refuses, apimachinery refuses too (no over-refusal).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from scoring.config import k8s_names, load_job_config
from scoring.deploy import kubernetes
from scoring.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "tests" / "k8s_names"
GOLDEN_JOBS = sorted((ROOT / "tests" / "data" / "golden").glob("*/jobs/*.yaml"))
NIGHTLY = ROOT / "conf" / "jobs" / "nightly.yaml"


def _go() -> str | None:
    return shutil.which("go") or next((g for g in ("/usr/local/go/bin/go",) if os.access(g, os.X_OK)), None)


@pytest.fixture(scope="session")
def apimachinery():
    """``check([(rule, value), ...]) -> [[problem, ...], ...]`` as apimachinery answers it."""
    go = _go()
    if go is None:
        pytest.skip("no Go toolchain (tests/k8s_names/README.md): apimachinery's own rules cannot be consulted")
    digest = hashlib.sha256(b"".join((CHECKER / n).read_bytes() for n in ("go.mod", "go.sum", "main.go"))).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scoring" / "k8s_names"
    binary = cache / f"k8s_names-{digest[:16]}"
    if not binary.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cache / f".{binary.name}.{os.getpid()}"
        env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        built = subprocess.run(
            [go, "build", "-o", str(partial), "."], cwd=CHECKER, env=env, capture_output=True, text=True, timeout=400
        )
        assert built.returncode == 0, f"building tests/k8s_names failed:\n{built.stderr[-3000:]}"
        partial.replace(binary)

    def check(queries):
        queries = list(queries)
        payload = json.dumps([{"rule": rule, "value": value} for rule, value in queries])
        done = subprocess.run([str(binary)], input=payload, capture_output=True, text=True, timeout=60, check=True)
        answers = json.loads(done.stdout)
        assert len(answers) == len(queries)
        return answers

    return check


# -- the rules themselves -------------------------------------------------------------------------------------------


def _adversarial() -> list[str]:
    hand = [
        "",
        "a",
        "A",
        "0",
        "-",
        ".",
        "..",
        "...",
        "..a",
        ".a",
        "a.",
        "a..b",
        "a.b",
        "a-b",
        "a--b",
        "-a",
        "a-",
        "a_b",
        "_a",
        "a b",
        " a",
        "a ",
        "a\n",
        "\na",
        "a\t",
        "a/b",
        "/a",
        "a/",
        "a/b/c",
        "example.com/name",
        "Example.com/n",
        "example.com/",
        "/name",
        "ex_ample.com/n",
        "a.b.c/D-e_F.g",
        "a@b",
        "a:b",
        "a*",
        "*.a",
        "ñame",
        "名前",
        "a\u200bb",
        "ａ",
        "ß",
        "İ",
        "K",
        "a\x00b",
        "team-a",
        "Team_A",
        "team.a",
        "123",
        "1-2",
        "0a",
        "a0",
        "z-9",
        "kube-system",
        "default",
        "spark.conf",
        "job.yaml",
        "my job.yaml",
        "-job.yaml",
        "job.yaml-",
        "JOB.YAML",
        "\u00e9t\u00e9.yaml",
        "$(VAR)",
        "${VAR}",
        "a=b",
        "a,b",
    ]
    for n in (62, 63, 64, 252, 253, 254):
        hand += ["a" * n, "a" * (n - 1) + "-", "a" * (n - 2) + ".a", "é" * (n // 2), "A" * n]
        hand += [("a" * 61 + ".") * (n // 62) + "a" * (n % 62)]
        hand += ["x.io/" + "a" * n, "p" * n + "/name"]
    alphabet = "abcz09-._/AZ é*:\n"
    rng = random.Random(20261207)
    generated = []
    for _ in range(2500):
        length = rng.choice((0, 1, 2, 3, 5, 8, 13, 62, 63, 64, 65, 252, 253, 254))
        text = "".join(rng.choice(alphabet) for _ in range(length))
        if rng.random() < 0.5:  # mostly valid characters, to land near the boundaries rather than far outside them
            text = "".join(c if c in "abcz09-." or rng.random() < 0.05 else "a" for c in text)
        generated.append(text)
    return list(dict.fromkeys(hand + generated))


def test_our_name_rules_accept_exactly_what_apimachinery_accepts(apimachinery):
    values = _adversarial()
    queries = [(rule, value) for rule in k8s_names.RULES for value in values]
    answers = apimachinery(queries)
    disagree = [
        (rule, value, theirs, ours)
        for (rule, value), theirs in zip(queries, answers, strict=True)
        if bool(theirs) != bool(ours := k8s_names.RULES[rule](value))
    ]
    assert disagree == []
    assert sum(not a for a in answers) > len(k8s_names.RULES) * 100  # plenty of valid ones, not only refusals


# -- names in rendered manifests --------------------------------------------------------------------------------------

_SUBDOMAIN_REFS = {"configMap", "secretKeyRef", "secretRef"}


def _names_in(obj, path=()):
    """(rule, value, where) for every name and key in a manifest, by where it sits (independent of the renderer)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = (*path, key)
            if key in ("labels", "nodeSelector") and isinstance(value, dict):
                for k, v in value.items():
                    yield "qualified_name", k, here
                    yield "label_value", str(v), here
                continue
            if key == "annotations" and isinstance(value, dict):
                yield from (("qualified_name", k, here) for k in value)
                continue
            if key == "data" and path == ():
                yield from (("config_map_key", k, here) for k in value)
                continue
            if key == "sparkConf":
                continue
            if key in ("serviceAccount", "priorityClassName") or (
                key == "name" and path[-1:] and path[-1] in _SUBDOMAIN_REFS
            ):
                yield "dns1123_subdomain", value, here
            elif key == "key" and path[-1:] == ("secretKeyRef",):
                yield "config_map_key", value, here
            elif key == "key" and "tolerations" in path:
                yield "qualified_name", value, here
            elif key == "imagePullSecrets":
                yield from (("dns1123_subdomain", v, here) for v in value)
            elif (
                key == "name"
                and len(path) >= 2
                and path[-2] in ("containers", "initContainers", "volumes", "volumeMounts")
            ):
                yield "dns1123_label", value, here
            elif key == "namespace" and path == ("metadata",):
                yield "dns1123_label", value, here
            yield from _names_in(value, here)
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _names_in(item, (*path, i))


def _object_names(obj):
    name = obj["metadata"]["name"]
    if obj["kind"] == "ConfigMap":
        yield "dns1123_subdomain", name, ("metadata", "name")
    else:
        yield "dns1035_label", name, ("metadata", "name")  # spark-operator's webhook
        yield "dns1123_label", name + "-driver", ("driver pod",)
    yield from _names_in(obj)


def _written(manifests_list, out: Path):
    kubernetes.write(manifests_list, out)
    return [yaml.safe_load(path.read_text()) for path in sorted(out.iterdir())]


def _refused_by_apimachinery(apimachinery, objects):
    queries = [(rule, value) for obj in objects for rule, value, _ in _object_names(obj)]
    assert len(queries) > 20
    return [(q, a) for q, a in zip(queries, apimachinery(queries), strict=True) if a]


@pytest.fixture
def _pinned(monkeypatch):
    monkeypatch.setattr(kubernetes, "resolve_alias", lambda name, alias, **_: "7")
    monkeypatch.delenv(kubernetes.IMAGE_ENV, raising=False)


STRESSED = [
    "name=" + "Ünïcode_Job.Name " * 8,
    "name=" + "a" * 200,
    "name=x",
    "kubernetes.namespace=" + "n" * 63,
    "kubernetes.namespace=a--b",
    "schedule.namespace='" + "0" * 63 + "'",
    "kubernetes.secret_env={TOKEN: {secret: " + ".".join(["s" * 63] * 3) + ", key: .x-Y_z..}}",
    "kubernetes.env_from_secrets=[a.b.c, " + "b" * 253 + "]",
    "kubernetes.image_pull_secrets=[reg.example.com]",
    "kubernetes.service_account=sa.example",
    "kubernetes.executor.node_selector={example.com/" + "K" * 63 + ": " + "v" * 63 + ", pool: ''}",
    "kubernetes.executor.tolerations=[{key: a.b/C_d, operator: Exists}]",
    "kubernetes.driver.priority_class=" + "p" * 253,
]


@pytest.mark.parametrize("override", ["", *STRESSED], ids=["golden", *(o.partition("=")[0] for o in STRESSED)])
def test_every_name_in_rendered_manifests_passes_apimachinery(override, apimachinery, tmp_path, _pinned):
    if override:
        config = load_job_config(NIGHTLY, [override])
        objects = _written([kubernetes.render(config, NIGHTLY, overrides=[override])], tmp_path)
    else:
        objects = _written([kubernetes.render(load_job_config(job), job) for job in GOLDEN_JOBS], tmp_path)
    assert _refused_by_apimachinery(apimachinery, objects) == []


BROKEN = [  # (--set, the config key the error must name, the bad value, the rule the API server holds it to)
    ("kubernetes.namespace=Team_A", "kubernetes.namespace", "Team_A", "dns1123_label"),
    ("kubernetes.namespace=team.a", "kubernetes.namespace", "team.a", "dns1123_label"),
    ("kubernetes.namespace=" + "n" * 64, "kubernetes.namespace", "n" * 64, "dns1123_label"),
    ("schedule.namespace=Team_A", "schedule.namespace", "Team_A", "dns1123_label"),
    ("schedule.namespace=" + "n" * 64, "schedule.namespace", "n" * 64, "dns1123_label"),
    ("kubernetes.secret_env={T: {secret: s, key: a/b}}", "kubernetes.secret_env.T.key", "a/b", "config_map_key"),
    ("kubernetes.secret_env={T: {secret: s, key: ..k}}", "kubernetes.secret_env.T.key", "..k", "config_map_key"),
    ("kubernetes.secret_env={T: {secret: S3, key: k}}", "kubernetes.secret_env.T.secret", "S3", "dns1123_subdomain"),
    ("kubernetes.env_from_secrets=[a..b]", "kubernetes.env_from_secrets", "a..b", "dns1123_subdomain"),
    (
        "kubernetes.image_pull_secrets=[" + "r" * 254 + "]",
        "kubernetes.image_pull_secrets",
        "r" * 254,
        "dns1123_subdomain",
    ),
    ("kubernetes.service_account=Spark", "kubernetes.service_account", "Spark", "dns1123_subdomain"),
    ("kubernetes.executor.node_selector={a/b/c: x}", "kubernetes.executor.node_selector", "a/b/c", "qualified_name"),
    (
        "kubernetes.executor.node_selector={p: " + "v" * 64 + "}",
        "kubernetes.executor.node_selector",
        "v" * 64,
        "label_value",
    ),
    ("kubernetes.driver.node_selector={pool: -gpu}", "kubernetes.driver.node_selector", "-gpu", "label_value"),
    (
        "kubernetes.executor.tolerations=[{key: 'a b', operator: Exists}]",
        "kubernetes.executor.tolerations.0.key",
        "a b",
        "qualified_name",
    ),
    (
        "kubernetes.executor.tolerations=[{key: k, value: 'a b'}]",
        "kubernetes.executor.tolerations.0.value",
        "a b",
        "label_value",
    ),
]


@pytest.mark.parametrize(("override", "key", "value", "rule"), BROKEN, ids=[b[1] + "=" + b[2][:12] for b in BROKEN])
def test_a_name_the_api_server_would_refuse_is_refused_naming_its_config_key(
    override, key, value, rule, apimachinery, _pinned
):
    assert apimachinery([(rule, value)])[0], f"apimachinery accepts {value!r} as {rule}: the case proves nothing"
    with pytest.raises(ConfigError) as refused:
        kubernetes.render(load_job_config(NIGHTLY, [override], keep_env_refs=True), NIGHTLY, overrides=[override])
    assert key in str(refused.value)


def test_a_file_name_that_is_no_config_map_key_is_refused_and_apimachinery_agrees(tmp_path, apimachinery, _pinned):
    for name in ("my job.yaml", "jöb.yaml", "a:b.yaml"):
        path = tmp_path / name
        path.write_text(NIGHTLY.read_text())
        with pytest.raises(ConfigError, match="data key.*the config file's name"):
            kubernetes.render(load_job_config(path, keep_env_refs=True), path)
        assert apimachinery([("config_map_key", name)])[0]
