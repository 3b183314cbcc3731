"""``scoring render k8s`` never writes a variable's value, and the driver still gets it: both halves, as an adversary.

A canary stands in for a password. It is set where the manifests are rendered: no written file may hold it, and the
manifests must render the same without it. Then the rendered driver runs as spark-operator would run it (spark-submit
with the SparkApplication's ``sparkConf`` as ``--conf``, :mod:`scoring.deploy.spark_submit` with the ConfigMap's file and the
rendered arguments), with the variable set as the pod's Secret would set it: Spark's own event log (an independent
record of the session's settings) must show the value, never the text ``${VAR}``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scoring.deploy import kubernetes

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "SCORING_CANARY_PW"
TOKEN = "SCORING_CANARY_TOKEN"


def _job(tmp_path: Path) -> Path:
    path = tmp_path / "canary.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "input": {"table": str(tmp_path / "no-such-table"), "key": "id"},
                "model": {"uri": "models:/m/1", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                "output": {"table": str(tmp_path / "out")},
                "spark": {
                    "conf": {
                        "spark.scoring.canary": f"${{{PASSWORD}}}",
                        "spark.hadoop.fs.s3a.secret.key": f"${{{PASSWORD}}}",
                        "spark.scoring.literal": "$${NOT_A_VARIABLE}",
                    }
                },
                "kubernetes": {
                    "env": {"DB_URL": f"jdbc:postgresql://scorer:${{{TOKEN}}}@db/scores?opt=$(not-a-ref)"},
                    "secret_env": {
                        PASSWORD: {"secret": "object-store", "key": "secret-key"},
                        TOKEN: {"secret": "db", "key": "token"},
                    },
                },
            },
            sort_keys=False,
        )
    )
    return path


def _render(job: Path, out: Path) -> dict[str, str]:
    from typer.testing import CliRunner

    from scoring.cli import app

    result = CliRunner().invoke(app, ["render", "k8s", str(job), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return {path.name: path.read_text() for path in sorted(out.iterdir())}


@pytest.fixture
def canaries(monkeypatch):
    values = {PASSWORD: f"canary-pw-{secrets.token_hex(8)}", TOKEN: f"canary-tok-{secrets.token_hex(8)}"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(kubernetes.IMAGE_ENV, raising=False)
    return values


def test_no_canary_reaches_a_manifest_and_the_render_needs_no_secret(tmp_path, canaries, monkeypatch):
    job = _job(tmp_path)
    files = _render(job, tmp_path / "with")
    for name, text in files.items():
        for value in canaries.values():
            for spelling in (value, base64.b64encode(value.encode()).decode()):
                assert spelling not in text, f"{name} holds a canary"
    application, config_map = (yaml.safe_load(files[name]) for name in sorted(files, key=lambda n: "configmap" in n))
    assert application["kind"] == "SparkApplication" and config_map["kind"] == "ConfigMap"
    conf = application["spec"]["sparkConf"]
    assert conf["spark.scoring.canary"] == conf["spark.hadoop.fs.s3a.secret.key"] == f"${{{PASSWORD}}}"
    assert conf["spark.scoring.literal"] == "$${NOT_A_VARIABLE}"  # as written: the driver's loader reads it again
    assert f"${{{PASSWORD}}}" in next(iter(config_map["data"].values()))
    for role in ("driver", "executor"):
        env = application["spec"][role]["template"]["spec"]["containers"][0]["env"]
        names = [item["name"] for item in env]
        assert env[names.index(PASSWORD)]["valueFrom"] == {
            "secretKeyRef": {"name": "object-store", "key": "secret-key"}
        }
        assert env[names.index(TOKEN)]["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "token"}}
        # Kubernetes' own syntax, after the variable it refers to; the literal $( escaped
        assert env[names.index("DB_URL")]["value"] == f"jdbc:postgresql://scorer:$({TOKEN})@db/scores?opt=$$(not-a-ref)"
        assert names.index(TOKEN) < names.index("DB_URL")

    for name in canaries:
        monkeypatch.delenv(name)
    assert _render(job, tmp_path / "without") == files  # nothing read from the environment


def test_a_variable_nothing_gives_the_pods_is_a_render_error_naming_it(tmp_path, canaries):
    job = _job(tmp_path)
    config = yaml.safe_load(job.read_text())
    del config["kubernetes"]["secret_env"][PASSWORD]
    job.write_text(yaml.safe_dump(config))
    from typer.testing import CliRunner

    from scoring.cli import app

    result = CliRunner().invoke(app, ["render", "k8s", str(job), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"spark.conf.spark.scoring.canary: ${{{PASSWORD}}} is not provided to the pods" in result.output
    assert f"kubernetes.secret_env.{PASSWORD}" in result.output
    assert not (tmp_path / "out").exists()


def _event_log_properties(events: Path) -> dict[str, str]:
    (log,) = [path for path in events.iterdir() if path.is_file() and not path.name.endswith(".crc")]
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("Event") == "SparkListenerEnvironmentUpdate":
            return dict(event["Spark Properties"])
    raise AssertionError(f"no environment update in {log}")


def test_the_rendered_driver_expands_the_variable_from_its_environment_before_the_session(tmp_path, canaries):
    import pyspark

    from scoring.adapters.spark import spark_submit_env

    files = _render(_job(tmp_path), tmp_path / "manifests")
    application, config_map = (yaml.safe_load(files[name]) for name in sorted(files, key=lambda n: "configmap" in n))
    spec = application["spec"]
    jobs = tmp_path / "etc-scoring-jobs"  # the ConfigMap, as mounted at kubernetes.CONFIG_DIR
    jobs.mkdir()
    for key, text in config_map["data"].items():
        (jobs / key).write_text(text)
    arguments = [arg.replace(kubernetes.CONFIG_DIR, str(jobs)) for arg in spec["arguments"]]
    assert spec["mainApplicationFile"] == f"local://{kubernetes.APP_ROOT}/{kubernetes.ENTRY_FILE}"
    events = tmp_path / "events"
    events.mkdir()
    submitted = {
        **spec["sparkConf"],
        # a setting only spark-submit holds (say, added to the SparkApplication by hand): expanded all the same
        "spark.scoring.submitted": f"${{{PASSWORD}}}",
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": events.as_uri(),
        "spark.eventLog.rolling.enabled": "false",
        "spark.eventLog.compress": "false",
        "spark.ui.enabled": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    command = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"), "--master", "local[1]"]
    for key, value in submitted.items():
        command += ["--conf", f"{key}={value}"]
    command += [str(ROOT / kubernetes.ENTRY_FILE), *arguments]
    env = {**spark_submit_env(), "SPARK_LOCAL_IP": "127.0.0.1"}
    env = {k: v for k, v in env.items() if k not in ("SCORING_DEBUG", "SCORING_TERMINATION_LOG", "PYSPARK_SUBMIT_ARGS")}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    # The run stops once the session is built: no Delta jars here (the image has them; resolving them would cost
    # half a minute), so its first Delta call fails; in any case the input table does not exist.
    assert done.returncode == 1 and "scoring error: " in done.stdout, done.stdout[-3000:]  # spark-submit: one stream
    properties = _event_log_properties(events)
    assert properties["spark.scoring.canary"] == canaries[PASSWORD]
    assert properties["spark.scoring.submitted"] == canaries[PASSWORD]
    assert properties["spark.scoring.literal"] == "${NOT_A_VARIABLE}"
    assert properties["spark.hadoop.fs.s3a.secret.key"] != f"${{{PASSWORD}}}"  # Spark redacts its value in the log
    unexpanded = {k: v for k, v in properties.items() if f"${{{PASSWORD}}}" in v or f"${{{TOKEN}}}" in v}
    assert unexpanded == {}


def test_the_driver_stops_naming_the_variable_and_the_setting_when_its_environment_lacks_it(
    tmp_path, canaries, monkeypatch, capsys
):
    from scoring.deploy import spark_submit as spark_entry

    files = _render(_job(tmp_path), tmp_path / "manifests")
    config_map = yaml.safe_load(next(text for name, text in files.items() if "configmap" in name))
    (key, text) = next(iter(config_map["data"].items()))
    (tmp_path / key).write_text(text)
    monkeypatch.delenv(PASSWORD)
    termination = tmp_path / "termination-log"
    termination.write_text("")
    monkeypatch.setenv("SCORING_TERMINATION_LOG", str(termination))
    assert spark_entry.main([str(tmp_path / key), "--set", "model.uri=models:/m/1"]) == 2
    err = capsys.readouterr().err
    assert f"spark.conf.'spark.scoring.canary': environment variable {PASSWORD} is not set" in err
    record = json.loads(termination.read_text())["error"]
    assert record["type"] == "ConfigError" and PASSWORD in record["message"]
    assert os.environ.get(PASSWORD) is None
