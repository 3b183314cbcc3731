from __future__ import annotations

import os
from pathlib import Path

import pytest

from scoring.config import build_job_config, load_job_config, parse_overrides
from scoring.errors import EXIT_CONFIG, ConfigError, exit_code_for

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


# -- the YAML itself ----------------------------------------------------------------------------------------------

GOOD = "input:\n  table: /in\n  key: id\nmodel:\n  uri: models:/m/1\noutput:\n  table: /out\n"


def _file(tmp_path, text: str | bytes, name: str = "job.yaml"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _refusal(path, overrides=()) -> str:
    """The message of the ConfigError that loading `path` raises; it always names the file or the --set."""
    with pytest.raises(ConfigError) as caught:
        load_job_config(path, overrides)
    message = str(caught.value)
    assert str(path) in message or "--set" in message, message
    assert exit_code_for(caught.value) == EXIT_CONFIG
    return message


def test_a_key_given_twice_is_refused_with_its_dotted_path_and_both_lines(tmp_path):
    message = _refusal(_file(tmp_path, GOOD + "input:\n  table: /other\n  key: id\n"))
    assert "job.yaml: input: given twice, on lines 1 and 8" in message
    assert "keep one of them" in message


def test_a_key_given_twice_in_a_nested_mapping_is_refused(tmp_path):
    text = GOOD.replace("  key: id\n", "  key: id\n  table: /again\n")
    assert "input.table: given twice, on lines 2 and 4" in _refusal(_file(tmp_path, text))


def test_a_key_given_twice_in_a_list_items_mapping_is_refused(tmp_path):
    text = (
        GOOD + "quality:\n  input:\n    expectations:\n      - type: not_null\n        column: a\n        column: b\n"
    )
    message = _refusal(_file(tmp_path, text))
    assert "quality.input.expectations.0.column: given twice, on lines 12 and 13" in message


def test_a_key_given_twice_in_a_set_value_is_refused(tmp_path):
    message = _refusal(_file(tmp_path, GOOD), ["spark.conf={a: 1, a: 2}"])
    assert "--set spark.conf.a: given twice" in message


def test_anchors_aliases_and_merge_keys_are_read_and_a_mappings_own_key_beats_a_merged_one(tmp_path):
    text = (
        "input:\n  table: /in\n  key: id\nmodel:\n  uri: models:/m/1\n"
        "output:\n  <<: {table: /merged, partition_by: [ds]}\n  table: /out\n"
        "quality:\n  input:\n    expectations: &checks\n      - {type: not_null, column: a}\n"
        "  output:\n    expectations: *checks\n"
    )
    config = load_job_config(_file(tmp_path, text))
    assert config.output.table == "/out" and config.output.partition_by == ["ds"]
    assert config.quality.output.expectations == config.quality.input.expectations


@pytest.mark.parametrize(
    ("text", "found"),
    [("- input\n- model\n", "a list"), ("hello\n", "a string"), ("3\n", "an integer"), ("false\n", "a boolean")],
)
def test_a_document_that_is_not_a_mapping_is_refused(tmp_path, text, found):
    assert f"a job config is a YAML mapping of sections (input:, model:, output:, ...), found {found}" in _refusal(
        _file(tmp_path, text)
    )


def test_an_empty_document_reports_the_missing_sections(tmp_path):
    message = _refusal(_file(tmp_path, "# nothing yet\n"))
    assert "input: required key is missing" in message and "output: required key is missing" in message


@pytest.mark.parametrize(
    ("key", "kind"), [("1", "an integer"), ("null", "a null"), ("true", "a boolean"), ("2026-01-01", "a date")]
)
def test_a_key_that_yaml_reads_as_something_other_than_text_is_refused(tmp_path, key, kind):
    message = _refusal(_file(tmp_path, GOOD + f"{key}: x\n"))
    assert f"line 8: the key '{key}' is read by YAML as {kind}, not a name" in message
    assert f"quote it ('{key}')" in message


@pytest.mark.parametrize(("text", "kind"), [("[a]: x\n", "list"), ("? {a: 1}\n: x\n", "mapping")])
def test_a_complex_key_is_refused(tmp_path, text, kind):
    assert f"line 8: a key is a {kind}; keys are names" in _refusal(_file(tmp_path, GOOD + text))


def test_a_dotted_key_in_a_file_is_told_to_nest():
    with pytest.raises(ConfigError, match=r"'input\.where': unknown key \(a key is one name, not a dotted path"):
        build_job_config({**BASE, "input.where": "ds = '2026-11-24'"})


def test_a_billion_laughs_document_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    message = _refusal(_file(tmp_path, GOOD + "\n".join(lines) + "\n"))
    assert "aliases (*name) repeat" in message and "more than 100,000" in message


def test_a_recursive_alias_is_refused(tmp_path):
    message = _refusal(_file(tmp_path, GOOD + "spark:\n  conf: &loop {again: *loop}\n"))
    assert "spark.conf.again: an alias refers to a mapping or list that contains it" in message


def test_very_deep_nesting_is_a_config_error_not_a_recursion_error(tmp_path):
    assert "nested more than 32 levels deep" in _refusal(_file(tmp_path, GOOD + "spark: " + "[" * 5000 + "\n"))
    assert "nested more than 32 levels deep" in _refusal(_file(tmp_path, GOOD), ["spark.conf=" + "[" * 5000])
    tree = deep = {}
    for _ in range(5000):
        deep["a"] = deep = {}
    with pytest.raises(ConfigError, match=r"<config>: the config is nested too deeply"):
        build_job_config({**BASE, "spark": tree})


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  key: id\n", "  key: id\n  where: 2026-11-24\n", "line 4: input.where: Input should be a valid string"),
        ("  table: /in\n", "  table: 2026\n", "line 2: input.table: Input should be a valid string"),
        ("  table: /out\n", "  table: yes\n", "line 7: output.table: Input should be a valid string"),
    ],
)
def test_a_date_number_or_boolean_where_text_is_expected_is_refused_with_a_quoting_hint(tmp_path, old, new, message):
    refusal = _refusal(_file(tmp_path, GOOD.replace(old, new)))
    assert message in refusal
    assert "YAML reads this unquoted value as" in refusal and "quote it to make it text" in refusal


def test_a_quoted_date_is_text(tmp_path):
    text = GOOD.replace("  key: id\n", "  key: id\n  where: \"ds = '2026-11-24'\"\n")
    assert load_job_config(_file(tmp_path, text)).input.where == "ds = '2026-11-24'"


@pytest.mark.parametrize("value", ["!!binary aGVsbG8=", "!!set {a, b}", "!!python/object:os.system x", "!foo x"])
def test_a_tag_beyond_plain_yaml_is_refused(tmp_path, value):
    message = _refusal(_file(tmp_path, GOOD + f"name: {value}\n"))
    assert "line 8: name: the tag" in message and "is not allowed in a job config" in message


def test_a_date_that_does_not_exist_is_refused_with_its_key(tmp_path):
    message = _refusal(_file(tmp_path, GOOD + "schedule:\n  start_date: 2026-13-45\n"))
    assert "line 9: schedule.start_date: YAML cannot read '2026-13-45' as a date: month must be in 1..12" in message


def test_an_integer_too_long_for_python_to_read_is_refused_with_its_key(tmp_path):
    message = _refusal(_file(tmp_path, GOOD + "runtime:\n  batch_rows: " + "9" * 5000 + "\n"))
    assert "line 9: runtime.batch_rows: YAML cannot read" in message


def test_bytes_that_are_not_utf8_are_refused_with_their_line_and_column(tmp_path):
    message = _refusal(_file(tmp_path, GOOD.encode() + b"name: caf\xe9\n"))
    assert "job.yaml, line 8, column 10: not UTF-8 text (byte 0xe9)" in message


def test_a_folder_is_refused(tmp_path):
    assert "is a folder, not a config file" in _refusal(tmp_path)


def test_an_unreadable_file_is_refused(tmp_path, monkeypatch):
    path = _file(tmp_path, GOOD)
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: make the refusal happen where the file is opened
        real_open = Path.open

        def denied(self, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    assert "cannot be read (permission denied)" in _refusal(path)


def test_a_tab_indented_file_gets_a_hint_to_indent_with_spaces(tmp_path):
    message = _refusal(_file(tmp_path, GOOD.replace("  table: /in", "\ttable: /in")))
    assert "is not valid YAML" in message and "indent with spaces" in message


def test_two_documents_in_one_file_are_refused(tmp_path):
    assert "expected a single document" in _refusal(_file(tmp_path, GOOD + "---\n" + GOOD))


def test_a_file_over_a_mebibyte_is_refused_unread(tmp_path):
    assert "larger than 1,048,576 bytes" in _refusal(_file(tmp_path, GOOD + "#" * (1 << 20) + "\n"))


def test_a_problem_in_a_file_names_its_line(tmp_path):
    text = GOOD + "runtime:\n  embedded:\n    thread: 2\n"
    assert "line 10: runtime.embedded.thread: unknown key" in _refusal(_file(tmp_path, text))


# -- values -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["", "   ", "\t"])
def test_an_empty_or_blank_where_is_refused_with_a_hint(where):
    with pytest.raises(ConfigError) as caught:
        build_job_config(_tree(input__where=where))
    message = str(caught.value)
    assert f"input.where: {where!r} is an empty filter" in message
    assert "leave input.where out (or --set input.where=null) to score every row" in message


def test_an_empty_where_from_set_is_refused_and_attributed_to_it():
    with pytest.raises(ConfigError, match=r"input\.where: '' is an empty filter.*\(from --set input\.where\)"):
        build_job_config(BASE, overrides=["input.where="])


def test_an_absent_or_null_where_means_no_filter(tmp_path):
    assert build_job_config(BASE).input.where is None
    assert load_job_config(_file(tmp_path, GOOD.replace("  key: id\n", "  key: id\n  where:\n"))).input.where is None
    assert build_job_config(_tree(input__where="ds = 'x'"), overrides=["input.where=null"]).input.where is None


@pytest.mark.parametrize("key", ["runtime.batch_rows", "runtime.triton.batch_rows"])
def test_batch_rows_above_2_to_the_24_are_refused(key):
    assert build_job_config(BASE, overrides=[f"{key}={2**24}"])
    with pytest.raises(ConfigError) as caught:
        build_job_config(BASE, overrides=[f"{key}={2**24 + 1}"])
    assert f"{key}: 16777217 is too large: at most 16,777,216; Arrow batches are indexed" in str(caught.value)
    assert exit_code_for(caught.value) == EXIT_CONFIG


@pytest.mark.parametrize(
    "override",
    [
        "runtime.triton.timeout_s=.inf",
        "runtime.triton.timeout_s=.nan",
        "runtime.triton.timeout_s=1e999",
        "schedule={start_date: 2026-01-01, retry_delay_s: .inf}",
        "schedule={start_date: 2026-01-01, sensor_poke_interval_s: .nan}",
        "schedule={start_date: 2026-01-01, sensor_timeout_s: -.inf}",
        "quality.input.max_bad_fraction=.nan",
        "quality.input.expectations=[{type: between, column: a, min: .nan}]",
        "quality.input.expectations=[{type: mean_between, column: a, max: .inf}]",
    ],
)
def test_a_number_that_is_not_finite_is_refused(override):
    with pytest.raises(ConfigError, match=r"Input should be a finite number") as caught:
        build_job_config(BASE, overrides=[override])
    assert f"(from --set {override.partition('=')[0]})" in str(caught.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("runtime.triton.timeout_s=31622401", r"runtime\.triton\.timeout_s: .*too large: at most 31,622,400"),
        ("runtime.triton.max_retries=1001", r"max_retries: 1001 is too large: at most 1,000"),
        ("runtime.triton.max_inflight=100000", r"max_inflight: 100000 is too large: at most 1,024"),
        ("runtime.embedded.threads=4096", r"threads: 4096 is too large"),
        ("runtime.triton.model.max_batch_size=4294967296", r"max_batch_size: .*at most 2,147,483,647"),
        ("runtime.triton.model.max_queue_delay_us=100000000000000000000", r"max_queue_delay_us: .*a year"),
        ("input.version=99999999999999999999999", r"input\.version: .*at most 9,223,372,036,854,775,807"),
    ],
)
def test_an_absurdly_large_number_is_refused_with_its_bound(override, message):
    with pytest.raises(ConfigError, match=message):
        build_job_config(BASE, overrides=[override])


def test_a_boolean_where_a_number_is_expected_is_refused():
    with pytest.raises(ConfigError, match=r"runtime\.batch_rows: expected a number, got true \(YAML reads"):
        build_job_config(BASE, overrides=["runtime.batch_rows=yes"])


def test_a_huge_python_integer_is_refused_without_printing_all_its_digits():
    with pytest.raises(ConfigError, match=r"runtime\.batch_rows: <an integer of about \d+ digits> is too large"):
        build_job_config({**BASE, "runtime": {"batch_rows": 10**5000}})


def test_preferred_batch_sizes_must_fit_within_max_batch_size():
    with pytest.raises(ConfigError, match=r"preferred_batch_sizes \[4096\] exceed max_batch_size 1024"):
        build_job_config(BASE, overrides=["runtime.triton.model={max_batch_size: 1024, preferred_batch_sizes: [4096]}"])


def test_an_expectations_min_above_its_max_is_refused():
    with pytest.raises(ConfigError, match=r"expectations\.0: expectation between has min 5 above max 1"):
        build_job_config(BASE, overrides=["quality.input.expectations=[{type: between, column: a, min: 5, max: 1}]"])


def test_in_set_values_must_be_strings_or_finite_numbers():
    with pytest.raises(ConfigError, match=r"values: item 1 is nan: allowed values are strings or finite numbers"):
        build_job_config(BASE, overrides=["quality.input.expectations=[{type: in_set, column: a, values: [1, .nan]}]"])
    with pytest.raises(ConfigError, match=r"values: item 0 is a null"):
        build_job_config(BASE, overrides=["quality.input.expectations=[{type: in_set, column: a, values: [null]}]"])


def test_spark_conf_numbers_and_booleans_are_passed_as_spark_spells_them():
    config = build_job_config(BASE, overrides=["spark.conf={spark.sql.shuffle.partitions: 8, spark.x.enabled: true}"])
    assert config.spark.conf == {"spark.sql.shuffle.partitions": "8", "spark.x.enabled": "true"}


# -- "did you mean" -----------------------------------------------------------------------------------------------


def test_an_unknown_key_in_an_optional_section_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"schedule\.cronn: unknown key \(did you mean 'schedule\.cron'\?\)"):
        build_job_config({**BASE, "schedule": {"start_date": "2026-11-01", "cronn": "@hourly"}})


def test_an_unknown_key_in_a_list_item_gets_a_suggestion():
    tree = {**BASE, "quality": {"input": {"expectations": [{"type": "not_null", "colum": "a"}]}}}
    with pytest.raises(
        ConfigError,
        match=r"quality\.input\.expectations\.0\.colum: unknown key \(did you mean "
        r"'quality\.input\.expectations\.0\.column'\?\); allowed here: type, column, min, max, values",
    ):
        build_job_config(tree)


def test_an_unknown_key_whose_value_is_a_mapping_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"runtime\.tritonn: unknown key \(did you mean 'runtime\.triton'\?\)"):
        build_job_config({**BASE, "runtime": {"tritonn": {"url": "localhost:8001"}}})


# -- environment variables ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["${1A}/in", "${}", "${A-default}", "${A B}", "${UNCLOSED"])
def test_a_malformed_environment_reference_is_refused(value):
    with pytest.raises(ConfigError, match=r"input\.table: .* has a \$\{ that is not \$\{VAR\} or \$\{VAR:-default\}"):
        build_job_config(_tree(input__table=value))


def test_a_default_that_nests_another_reference_is_refused(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConfigError, match=r"nests \$\{\.\.\.\} in a default, which is not supported"):
        build_job_config(_tree(input__table="${NOT_SET_ANYWHERE:-${HOME}}"))


def test_a_doubled_dollar_is_a_literal_dollar_brace(monkeypatch):
    monkeypatch.setenv("LAKE", "/mnt/lake")
    assert build_job_config(_tree(input__table="$${LAKE}/in")).input.table == "${LAKE}/in"


def test_an_environment_value_is_not_expanded_again(monkeypatch):
    monkeypatch.setenv("LAKE", "${HOME}")
    assert build_job_config(_tree(input__table="${LAKE}/in")).input.table == "${HOME}/in"


def test_environment_variables_do_not_expand_in_keys():
    with pytest.raises(
        ConfigError, match=r"spark\.conf\.\$\{KEY\}: environment variables expand in values, not in keys"
    ):
        build_job_config({**BASE, "spark": {"conf": {"${KEY}": "x"}}})


# -- --set --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a..b", ".a", "a.", "input. .table"])
def test_a_set_key_with_an_empty_part_is_refused(key):
    with pytest.raises(ConfigError, match=r"--set .*: the key .* has an empty part"):
        parse_overrides([f"{key}=1"])


def test_a_set_may_index_an_existing_list_item():
    tree = {**BASE, "quality": {"input": {"expectations": [{"type": "between", "column": "a", "min": 0}]}}}
    config = build_job_config(tree, overrides=["quality.input.expectations.0.min=3", "output.partition_by=[ds]"])
    assert config.quality.input.expectations[0].min == 3
    assert build_job_config(_tree(input__key=["a", "b"]), overrides=["input.key.1=c"]).input.key == ["a", "c"]


@pytest.mark.parametrize("index", ["2", "-1", "x"])
def test_a_set_index_outside_a_list_is_refused(index):
    with pytest.raises(ConfigError, match=rf"--set input\.key\.{index}: input\.key is a list of 2 item\(s\)"):
        build_job_config(_tree(input__key=["a", "b"]), overrides=[f"input.key.{index}=c"])


def test_a_set_below_a_value_that_is_not_a_mapping_is_refused():
    with pytest.raises(ConfigError, match=r"--set input\.table: input is 3 \(an integer\), not a mapping or a list"):
        build_job_config(BASE, overrides=["input=3", "input.table=/x"])
    with pytest.raises(ConfigError, match=r"--set input\.key\.0: input\.key is 'id' \(a string\), not a mapping"):
        build_job_config(BASE, overrides=["input.key.0=x"])


def test_a_set_value_that_is_not_valid_yaml_is_refused_with_a_quoting_hint():
    with pytest.raises(ConfigError) as caught:
        build_job_config(BASE, overrides=["input.table=[unclosed"])
    message = str(caught.value)
    assert "--set input.table: the value '[unclosed' is not valid YAML" in message
    assert """quote the value to pass it as text, e.g. --set 'input.table="..."'""" in message


def test_a_set_under_spark_conf_takes_the_rest_of_the_path_as_one_spark_key():
    config = build_job_config(BASE, overrides=["spark.conf.spark.driver.memory=4g"])
    assert config.spark.conf == {"spark.driver.memory": "4g"}


def test_a_set_can_fill_a_section_left_null_in_the_file(tmp_path):
    config = load_job_config(_file(tmp_path, GOOD + "schedule:\n"), ["schedule.start_date=2026-11-01"])
    assert config.schedule is not None and str(config.schedule.start_date) == "2026-11-01"


def test_the_last_set_of_a_key_wins():
    assert build_job_config(BASE, overrides=["input.version=1", "input.version=2"]).input.version == 2


def test_overrides_must_be_a_list_of_strings():
    with pytest.raises(ConfigError, match=r"overrides are a list of KEY=VALUE strings, not one string"):
        build_job_config(BASE, overrides="input.version=3")
    with pytest.raises(ConfigError, match=r"--set 3 is not a KEY=VALUE string"):
        build_job_config(BASE, overrides=[3])  # type: ignore[list-item]


def test_a_set_value_given_as_a_mapping_where_text_is_expected_gets_a_quoting_hint():
    with pytest.raises(ConfigError, match=r"input\.table: .*YAML reads this value as a mapping .*quote it"):
        build_job_config(BASE, overrides=["input.table=a: b"])


def test_a_mapping_that_is_not_a_mapping_is_refused_by_build():
    with pytest.raises(ConfigError, match=r"<config>: a job config is a mapping of sections .*found a list"):
        build_job_config(["input", "model"])  # type: ignore[arg-type]
