"""``scoring render k8s`` as an adversary tries it: environment references that must stay references and reach the
pods, and job names that must never collide (no cluster, no JVM, no Go; ``tests/integration/test_kubernetes_names.py``
holds the name rules to Kubernetes' own, ``test_kubernetes_secrets.py`` runs the rendered driver)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from scoring.config import KubernetesConfig, k8s_names, load_job_config
from scoring.deploy import k8s_env, kubernetes
from scoring.deploy.spark_submit import expand_spark_conf
from scoring.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
NIGHTLY = ROOT / "conf" / "jobs" / "nightly.yaml"


@pytest.fixture(autouse=True)
def _no_registry(monkeypatch):
    monkeypatch.setattr(kubernetes, "resolve_alias", lambda name, alias, **_: "7")
    monkeypatch.delenv(kubernetes.IMAGE_ENV, raising=False)


def _render(*overrides, path=NIGHTLY):
    return kubernetes.render(load_job_config(path, overrides, keep_env_refs=True), path, overrides=list(overrides))


def _name(job_name: str) -> str:
    return kubernetes.application_name(load_job_config(NIGHTLY, [f"name={yaml.safe_dump(job_name).strip()}"]))


# -- names ----------------------------------------------------------------------------------------------------------

PREFIX = "churn-scores-for-the-european-region-nightly-partition-b"  # 56 characters


def test_distinct_job_names_never_share_an_application_name():
    names = [
        "churn",
        "Churn",
        "CHURN",
        "churn_",
        "churn.",
        "churn-",
        "-churn",
        "churn ",
        "chürn",
        "churn\u200b",
        "churn_eu",
        "churn-eu",
        "churn.eu",
        "churn eu",
        "Churn_EU",
        "日本",
        "日本語",
        "ü",
        "ö",
        *(PREFIX + suffix for suffix in ("", "-1", "-2", "x", "y", "_1", "-" + "z" * 40)),
        *("x" * n for n in (47, 48, 49, 55, 56, 57, 80, 200)),
    ]
    hashed = _name("Churn").removeprefix("scoring-")  # a job named like another's hashed name is hashed itself
    names += [hashed, hashed.upper()]
    rendered = {name: _name(name) for name in names}
    assert len(set(rendered.values())) == len(names), [
        (a, b) for a, b in itertools.combinations(names, 2) if rendered[a] == rendered[b]
    ]
    for name, app in rendered.items():
        assert not k8s_names.dns1035_label(app), (name, app)
        assert len(app) <= kubernetes.APP_NAME_MAX and not k8s_names.dns1123_label(app + "-driver"), app
        assert app == _name(name)  # stable: the same job renders to the same name every time
    assert rendered["churn"] == "scoring-churn" and rendered["churn-eu"] == "scoring-churn-eu"  # readable as written


def test_two_long_jobs_sharing_their_first_56_characters_render_side_by_side(tmp_path):
    first, second = (_render(f"name={PREFIX}-{n}") for n in (1, 2))
    written = kubernetes.write([first, second], tmp_path)
    assert len(written) == 4 and first.name != second.name
    assert first.config_map["metadata"]["name"] != second.config_map["metadata"]["name"]


# -- environment references -----------------------------------------------------------------------------------------

SECRET = "kubernetes.secret_env={PW: {secret: store, key: pw}}"


def test_a_render_reads_no_variable_it_copies_into_a_manifest(monkeypatch):
    monkeypatch.setenv("PW", "canary-value-1")
    manifests = _render("spark.conf={spark.hadoop.fs.s3a.secret.key: '${PW}'}", SECRET)
    assert manifests.application["spec"]["sparkConf"]["spark.hadoop.fs.s3a.secret.key"] == "${PW}"
    assert "canary-value-1" not in "".join(manifests.files().values())


def test_a_variable_unset_where_the_render_runs_is_left_for_the_pods(monkeypatch):
    monkeypatch.delenv("SCORING_UNSET_TABLE", raising=False)
    manifests = _render("input.table=${SCORING_UNSET_TABLE}", "kubernetes.env={SCORING_UNSET_TABLE: /lake/features}")
    assert "--set" in manifests.application["spec"]["arguments"]
    with pytest.raises(ConfigError, match="SCORING_UNSET_TABLE is not set"):  # a run still needs it
        load_job_config(NIGHTLY, ["input.table=${SCORING_UNSET_TABLE}"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("spark.conf={spark.x: '${NOBODY_GIVES_THIS}'}",), r"\$\{NOBODY_GIVES_THIS\} is not provided to the pods"),
        (("input.where=id > ${NOBODY_GIVES_THIS}",), r"--set input.where: \$\{NOBODY_GIVES_THIS\} is not provided"),
        (
            ("spark.conf={spark.driver.extraJavaOptions: '-Dpw=${PW}'}", SECRET),
            "spark-submit reads before scoring's code runs",
        ),
        (("spark.conf={spark.kubernetes.driverEnv.PW: '${PW}'}", SECRET), "spark-submit reads before"),
        (("kubernetes.env={URL: 'https://${PW:-x}@h'}", SECRET), "Kubernetes, which has no defaults"),
        (("kubernetes.env={A: '${B}', B: '${A}'}",), "refer to each other"),
    ],
)
def test_a_reference_that_would_not_work_in_the_pods_is_refused_when_rendering(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _render(*overrides)


def test_a_reference_the_pods_may_get_from_a_whole_secret_or_with_a_default_is_accepted():
    _render("spark.conf={spark.x: '${FROM_ENVFROM}'}", "kubernetes.env_from_secrets=[store]")
    _render("spark.conf={spark.x: '${NOT_GIVEN:-fallback}'}")


def test_kubernetes_env_uses_kubernetes_syntax_after_what_it_refers_to():
    k8s = KubernetesConfig(
        env={"Z_URL": "u:${PW}@h/${A_HOST}", "A_HOST": "db", "LIT": "$(not) $$ ${X:-y} $${Q} $"},
        secret_env={"PW": {"secret": "store", "key": "pw"}},
    )
    with pytest.raises(ConfigError, match="no defaults"):
        k8s_env.check(k8s_env.references(yaml.safe_dump({"kubernetes": {"env": dict(k8s.env)}})), k8s, "j")
    k8s = k8s.model_copy(update={"env": {**k8s.env, "LIT": "$(not) $$ $${Q} $"}})
    env = k8s_env.container_env(k8s)["env"]
    names = [item["name"] for item in env]
    assert names == ["A_HOST", "LIT", "PW", "Z_URL"]
    values = {item["name"]: item.get("value") for item in env}
    assert values["Z_URL"] == "u:$(PW)@h/$(A_HOST)"
    assert values["LIT"] == "$$(not) $$$$ $${Q} $$"  # Kubernetes turns $$ back into $: the text arrives as written


# -- the driver's expansion -----------------------------------------------------------------------------------------


def test_the_driver_expands_spark_submit_s_settings_from_its_environment_and_names_what_is_missing():
    conf = {
        "spark.a": "${PW}",
        "spark.b": "x-${MISSING:-d}-y",
        "spark.c": "$${PW}",
        "spark.d": "plain",
        "spark.e": "${env:HOME}",  # Spark's own syntax: left alone
    }
    assert expand_spark_conf(conf, {"PW": "s3cr3t"}) == {"spark.a": "s3cr3t", "spark.b": "x-d-y", "spark.c": "${PW}"}
    with pytest.raises(ConfigError, match="spark.conf spark.a: environment variable PW is not set") as missing:
        expand_spark_conf(conf, {})
    assert "kubernetes.secret_env.PW" in missing.value.hint
