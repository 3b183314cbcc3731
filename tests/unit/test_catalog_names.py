"""Which table values are catalog names and which are paths (scoring.adapters.catalog.is_name)."""

from __future__ import annotations

import pytest

from scoring.adapters import catalog, deltalog
from scoring.errors import ConfigError


@pytest.mark.parametrize(
    "value", ["db.features", "spark_catalog.db.features", "`my db`.features", "_x.y_2", "main.sales.t"]
)
def test_dotted_identifiers_are_names(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert catalog.is_name(value)


@pytest.mark.parametrize(
    "value",
    ["features", "./db.features", "/lake/db.features", "s3://bucket/db.t", "file:/x/y", "a.b.c.d", "db.", "", None],
)
def test_paths_uris_and_other_shapes_are_not_names(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not catalog.is_name(value)


def test_an_existing_folder_in_the_current_directory_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scores.delta").mkdir()
    assert not catalog.is_name("scores.delta")
    assert catalog.is_name("other.delta")


def test_delta_rs_readers_refuse_a_name_with_the_key_and_how_to_find_the_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        deltalog.snapshot("db.scores", key="serve.table")
    assert str(e.value).startswith("serve.table: db.scores reads as a table name")
    assert "DESCRIBE DETAIL db.scores" in e.value.hint and "./db.scores" in e.value.hint
