from __future__ import annotations

import pytest

from scoring.config import build_job_config, load_job_config, parse_overrides
from scoring.errors import ConfigError

BASE = {
    "input": {"table": "/lake/in", "key": "id"},
    "model": {"uri": "models:/churn@champion"},
    "output": {"table": "/lake/out"},
}


def _tree(**changes):
    tree = {k: dict(v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        tree[section][key] = value
    return tree


def test_a_minimal_config_gets_documented_defaults():
    config = build_job_config(BASE)
    assert config.input.key == ["id"]
    assert config.input.features is None and config.input.version is None
    assert config.input.on_invalid_rows == "fail"
    assert config.runtime.backend == "embedded" and config.runtime.batch_rows == 10_000
    assert config.output.partition_by == []


def test_an_unknown_key_is_named_with_its_dotted_path_and_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        build_job_config(_tree(input__tabel="/x"), source="conf/jobs/x.yaml")
    message = str(caught.value)
    assert "conf/jobs/x.yaml" in message
    assert "input.tabel: unknown key (did you mean 'input.table'?)" in message


def test_a_nested_unknown_key_is_named_too():
    tree = _tree()
    tree["runtime"] = {"embedded": {"thread": 2}}
    with pytest.raises(
        ConfigError, match=r"runtime\.embedded\.thread: unknown key \(did you mean 'runtime\.embedded\.threads'\?\)"
    ):
        build_job_config(tree)


def test_a_missing_required_key_is_named():
    tree = _tree()
    del tree["output"]["table"]
    with pytest.raises(ConfigError, match=r"output\.table: required key is missing"):
        build_job_config(tree)


def test_a_wrong_type_is_named_with_the_value_given():
    with pytest.raises(ConfigError, match=r"runtime\.batch_rows: .*integer.*'lots'"):
        build_job_config(_tree(), overrides=["runtime.batch_rows=lots"])


def test_an_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match=r"runtime\.backend"):
        build_job_config(_tree(), overrides=["runtime.backend=gpu-magic"])


def test_a_model_uri_must_be_a_registry_uri():
    with pytest.raises(ConfigError, match=r"model\.uri: .*models:/<name>@<alias>"):
        build_job_config(_tree(model__uri="runs:/abc/model"))


def test_overrides_set_any_dotted_key_with_yaml_values():
    config = build_job_config(
        BASE,
        overrides=[
            "input.version=3",
            "input.key=[a, b]",
            "output.partition_by=ds",
            "input.where=ds = '2026-11-01'",
            "spark.conf={spark.driver.memory: 2g}",
        ],
    )
    assert config.input.version == 3
    assert config.input.key == ["a", "b"]
    assert config.output.partition_by == ["ds"]
    assert config.input.where == "ds = '2026-11-01'"
    assert config.spark.conf == {"spark.driver.memory": "2g"}


def test_an_override_without_equals_is_refused():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["input.table"])


def test_environment_variables_expand_with_defaults(monkeypatch):
    monkeypatch.setenv("LAKE", "/mnt/lake")
    config = build_job_config(_tree(input__table="${LAKE}/in", output__table="${NOT_SET_ANYWHERE:-/tmp/out}"))
    assert config.input.table == "/mnt/lake/in"
    assert config.output.table == "/tmp/out"


def test_an_unset_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE is not set"):
        build_job_config(_tree(input__table="${NOT_SET_ANYWHERE}/in"))


def test_load_names_the_file_and_defaults_the_job_name_to_its_stem(tmp_path):
    path = tmp_path / "nightly.yaml"
    path.write_text("input: {table: /in, key: id}\nmodel: {uri: 'models:/m/1'}\noutput: {table: /out}\n")
    assert load_job_config(path).name == "nightly"
    path.write_text("input: {table: /in, key: id}\nmodel: {uri: 'models:/m/1'}\n")
    with pytest.raises(ConfigError, match=r"(?s)nightly\.yaml: .*output: required key is missing"):
        load_job_config(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_job_config(tmp_path / "absent.yaml")


def test_the_shipped_job_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "conf" / "jobs").glob("*.yaml"))
    assert configs
    for path in configs:
        assert load_job_config(path).model.uri.startswith("models:/")


def test_the_config_is_frozen():
    config = build_job_config(BASE)
    with pytest.raises(Exception, match="frozen"):
        config.input.table = "/elsewhere"  # type: ignore[misc]
