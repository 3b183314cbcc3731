"""On a cluster a worker loads the model from the copy Spark shipped to it (SparkFiles), never from the registry;
without such a copy it falls back to the driver's folder, then to the registry."""

from __future__ import annotations

import pytest

from scoring.adapters import embedded
from scoring.adapters.embedded import EmbeddedSpec


@pytest.fixture
def spark_files_root(tmp_path, monkeypatch):
    """This process seen as a Spark Python worker whose SparkFiles root is a temporary folder."""
    from pyspark import SparkFiles

    root = tmp_path / "executor"
    root.mkdir()
    monkeypatch.setattr(SparkFiles, "_root_directory", str(root))
    monkeypatch.setattr(SparkFiles, "_is_running_on_worker", True)
    return root


@pytest.fixture
def no_registry(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the worker went to the registry")

    monkeypatch.setattr("scoring.adapters.registry.resolve_model", refuse)


def _model(folder):
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    return folder


def _spec(local_path, spark_file=None):
    return EmbeddedSpec("models:/m/1", str(local_path), ("onnx",), ("a",), spark_file=spark_file)


def test_a_worker_loads_the_copy_spark_shipped_even_where_the_driver_s_folder_is_visible(
    tmp_path, spark_files_root, no_registry
):
    driver_copy = _model(tmp_path / "driver" / "1")
    shipped = _model(spark_files_root / "m-1-abc.zip")
    assert embedded._local_files(_spec(driver_copy, "m-1-abc.zip")) == shipped


def test_a_worker_on_another_host_loads_the_shipped_copy_without_the_registry(tmp_path, spark_files_root, no_registry):
    shipped = _model(spark_files_root / "m-1-abc.zip")
    assert embedded._local_files(_spec(tmp_path / "not-on-this-host", "m-1-abc.zip")) == shipped


def test_without_a_shipped_copy_the_driver_s_folder_is_used(tmp_path, spark_files_root, no_registry):
    driver_copy = _model(tmp_path / "driver" / "1")
    assert embedded._local_files(_spec(driver_copy, "m-1-missing.zip")) == driver_copy
    assert embedded._local_files(_spec(driver_copy)) == driver_copy


def test_with_neither_the_worker_downloads_from_the_registry(tmp_path, spark_files_root, monkeypatch):
    downloaded = _model(tmp_path / "download")
    calls = []

    class Ref:
        local_path = str(downloaded)

    monkeypatch.setattr("scoring.adapters.registry.resolve_model", lambda *a: calls.append(a) or Ref())
    assert embedded._local_files(_spec(tmp_path / "missing", "m-1-missing.zip")) == downloaded
    assert len(calls) == 1
