"""Property tests of the config loader: whatever a YAML file, a Python tree or a ``--set`` holds, loading it either
gives a valid `JobConfig` or raises a `ConfigError` that names where the problem came from (the file, the source given
to `build_job_config`, or ``--set``). Any other exception, a traceback, fails these tests."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import tempfile
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from scoring.config import MAX_BATCH_ROWS, JobConfig, build_job_config, load_job_config
from scoring.errors import ConfigError

BASE: dict[str, Any] = {
    "input": {"table": "/lake/in", "key": "id", "where": "ds = '2026-11-24'"},
    "model": {"uri": "models:/churn@champion"},
    "runtime": {"backend": "triton", "triton": {"batch_rows": 128, "model": {"preferred_batch_sizes": [64]}}},
    "output": {"table": "/lake/out", "partition_by": ["ds"]},
    "spark": {"conf": {"spark.sql.shuffle.partitions": "1"}},
    "quality": {"input": {"expectations": [{"type": "between", "column": "f0", "min": 0, "max": 1}]}},
    "schedule": {"start_date": dt.date(2026, 11, 1)},
}


def _schema_paths(model: type[BaseModel], prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every dotted path the schema has (a list's first item standing for its items)."""
    found = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        found.append(path)
        for option in (field.annotation, *get_args(field.annotation)):
            if get_origin(option) is list:
                found.append((*path, 0))
                option = get_args(option)[0]
                path = (*path, 0)
            if isinstance(option, type) and issubclass(option, BaseModel):
                found += _schema_paths(option, path)
    return found


SCHEMA_PATHS = list(dict.fromkeys([*_schema_paths(JobConfig), ("spark", "conf", "spark.sql.shuffle.partitions")]))

# Names the schema knows, so that generated trees reach deep into it, and strings YAML or the loader treat specially.
NAMES = [
    *["name", "run_id", "input", "table", "key", "features", "where", "version", "on_invalid_rows", "model", "uri"],
    *["runtime", "backend", "batch_rows", "embedded", "threads", "triton", "timeout_s", "max_retries", "url"],
    *["max_batch_size", "preferred_batch_sizes", "output", "partition_by", "spark", "conf", "master", "quality"],
    *["expectations", "type", "column", "min", "max", "values", "policy", "max_bad_fraction", "schedule", "cron"],
    *["start_date", "retry_delay_s", "sensor_timeout_s", "tags", "0", "1", "spark.driver.memory", "<<"],
]
TRICKY = [
    *[
        "",
        " ",
        "\t",
        "${HOME}",
        "${NOT_SET_IN_ANY_ENV}",
        "${NOT_SET_IN_ANY_ENV:-d}",
        "${1A}",
        "${}",
        "$${X}",
        "${A:-${B}}",
    ],
    *[
        "yes",
        "no",
        "on",
        "null",
        "~",
        ".inf",
        ".nan",
        "2026-11-24",
        "2026-13-45",
        "0o17",
        "1_000",
        "1e999",
        "models:/m/1",
    ],
    *[
        "models:/m@champion",
        "not_null",
        "between",
        "in_set",
        "triton",
        "embedded",
        "fail",
        "skip",
        "*a",
        "&a",
        "!!binary",
    ],
    *["a: b", "[a", "{a", "#c", "- x", "? x", "<<", "=", "\u2028", "\x85", "\ufeff", "caf\u00e9", "\U0001f600", "\x00"],
]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12) | st.sampled_from(TRICKY + NAMES)
keys = st.sampled_from(NAMES) | text
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from([0, 1, -1, 2**24, 2**24 + 1, 2**31, 2**63])
    | st.floats()  # nan and both infinities included
    | st.dates(min_value=dt.date(1, 1, 1))
    | text
)
trees = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=16
)
paths = st.sampled_from(SCHEMA_PATHS).map(list) | st.lists(keys, min_size=1, max_size=4)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder for the examples' files; each example writes a file of its own (tmp_path is not reset per example)."""
    return tmp_path_factory.mktemp("config-properties")


def _write(folder: Path, data: str | bytes) -> Path:
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", dir=folder, delete=False) as stream:
        stream.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(stream.name)


def _merged(tree: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    """`tree` with `value` at `path`, making mappings on the way (a scalar in the way is replaced; a list's item is
    set when the index is in range)."""
    tree = copy.deepcopy(tree)
    node: Any = tree
    for part in path[:-1]:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            if not isinstance(node[part], (dict, list)):
                node[part] = {}
            node = node[part]
            continue
        if isinstance(node, list):
            return tree
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        if isinstance(path[-1], int) and path[-1] < len(node):
            node[path[-1]] = value
    else:
        node[path[-1]] = value
    return tree


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _check(load, *sources: str) -> None:
    """`load()` gives a valid JobConfig, or a ConfigError naming one of `sources`; anything else fails the test."""
    try:
        config = load()
    except ConfigError as e:
        assert any(source in str(e) for source in sources), f"{e!s} names none of {sources}"
        return
    assert isinstance(config, JobConfig)
    assert config.input.where is None or config.input.where.strip()
    assert config.runtime.batch_rows <= MAX_BATCH_ROWS and config.runtime.triton.batch_rows <= MAX_BATCH_ROWS
    assert _finite(config.model_dump())


def test_the_base_config_the_properties_start_from_is_valid(folder):
    assert build_job_config(BASE).schedule is not None
    assert load_job_config(_write(folder, yaml.safe_dump(BASE))).quality.input.expectations


@FAST
@given(path=paths | st.lists(keys | st.integers(0, 3) | st.none(), min_size=1, max_size=4), value=trees)
def test_any_tree_merged_into_a_valid_config_builds_or_is_a_config_error_naming_its_source(path, value):
    _check(lambda: build_job_config(_merged(BASE, path, value), source="<generated>"), "<generated>")


@FAST
@given(path=paths, value=trees)
def test_any_tree_written_as_yaml_loads_or_is_a_config_error_naming_the_file(folder, path, value):
    document = yaml.safe_dump(_merged(BASE, path, value), allow_unicode=True)
    config_file = _write(folder, document)
    _check(lambda: load_job_config(config_file), str(config_file))


@FAST
@given(path=paths, value=trees)
def test_any_value_set_at_any_dotted_path_loads_or_is_a_config_error(folder, path, value):
    config_file = _write(folder, yaml.safe_dump(BASE))
    override = f"{'.'.join(map(str, path))}={json.dumps(value, default=str)}"
    _check(lambda: load_job_config(config_file, [override]), str(config_file), "--set")


PIECES = [*":-[]{}&*!|>'\"#%@`,?=~ \n\t.", "\r", "abc", "12", "${X}", "<<", "\u2028", "\ufeff", "\x00", "  ", "\n  "]
YAMLISH = st.lists(st.sampled_from(PIECES + NAMES), max_size=30).map("".join)


@FAST
@given(document=YAMLISH | st.text(max_size=60) | st.sampled_from(TRICKY))
def test_any_text_document_loads_or_is_a_config_error_naming_the_file(folder, document):
    config_file = _write(folder, document.encode("utf-8", "surrogatepass"))
    _check(lambda: load_job_config(config_file), str(config_file))


@FAST
@given(data=st.binary(max_size=80))
def test_any_bytes_load_or_are_a_config_error_naming_the_file(folder, data):
    config_file = _write(folder, yaml.safe_dump(BASE).encode() + data)
    _check(lambda: load_job_config(config_file), str(config_file))


@FAST
@given(overrides=st.lists(YAMLISH | st.text(max_size=40) | st.builds("{}={}".format, st.sampled_from(NAMES), YAMLISH)))
def test_any_set_strings_load_or_are_a_config_error(folder, overrides):
    config_file = _write(folder, yaml.safe_dump(BASE))
    _check(lambda: load_job_config(config_file, overrides), str(config_file), "--set")
