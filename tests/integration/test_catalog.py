"""Tables by name: input.table / output.table as names in Spark's catalog, with the same pinning and idempotency as
paths. In the suite's session (its in-memory catalog) and, across processes, with a real Hive metastore (Derby)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import yaml

from scoring import build_job_config, run
from scoring.errors import ConfigError
from scoring.tools import demo
from tests.integration.conftest import delta_version, features_of, make_table, read_delta


@pytest.fixture(scope="module")
def catalog_db(spark, lake, tmp_path_factory):
    """A database whose location is a temporary folder, holding the lake's input as `features`."""
    where = tmp_path_factory.mktemp("warehouse") / "lakecat.db"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS lakecat LOCATION '{where}'")
    spark.sql(f"CREATE TABLE IF NOT EXISTS lakecat.features USING delta LOCATION '{lake.input_table}'")
    yield where
    spark.sql("DROP DATABASE IF EXISTS lakecat CASCADE")  # external tables: the files stay where they are


def _job(lake, **sections):
    tree = lake.job("unused", **sections)
    return build_job_config(tree)


def test_a_named_input_and_a_new_named_output_score_like_paths(spark, lake, catalog_db):
    config = _job(lake, input={"table": "lakecat.features"}, output={"table": "lakecat.scores"}, run_id="by-name-1")
    summary = run(config, spark=spark)
    location = catalog_db / "scores"
    assert summary.input_table == "lakecat.features" and summary.output_table == "lakecat.scores"
    assert spark.catalog.tableExists("lakecat.scores")  # registered after the commit
    detail = spark.sql("DESCRIBE DETAIL lakecat.scores").head()
    assert detail["location"].rstrip("/").endswith(str(location)) and detail["format"] == "delta"
    out = read_delta(location).sort_by("customer_id")
    src = lake.table.sort_by("customer_id")
    assert out.column("customer_id").to_pylist() == src.column("customer_id").to_pylist()
    import onnxruntime

    session = onnxruntime.InferenceSession(mlflow.onnx.load_model(summary.model_uri).SerializeToString())
    label, _ = session.run(["label", "probabilities"], {"X": features_of(src).astype(np.float32)})
    np.testing.assert_array_equal(out.column("label").to_numpy(), label)
    # pinned: the input version the run read is the version of the table the name points at
    assert summary.input_version == delta_version(lake.input_table)
    # idempotent: the same run id again commits nothing
    again = run(config, spark=spark)
    assert not again.committed and delta_version(location) == summary.output_version
    # the quarantine default follows the output's name
    assert config.quarantine_table == "lakecat.scores_quarantine"


def test_a_run_that_died_after_its_commit_registers_the_name_on_the_next_run(spark, lake, catalog_db):
    from scoring.adapters import catalog

    config = _job(lake, input={"table": "lakecat.features"}, output={"table": "lakecat.late"}, run_id="late-1")
    resolved = catalog.resolve(config, spark)
    table = resolved.tables["output.table"]
    assert not table.registered and table.location == str(catalog_db / "late")
    # what a run that died between its commit and registering leaves: the table at the location, no name
    path_config = config.model_copy(update={"output": config.output.model_copy(update={"table": table.location})})
    first = run(path_config, spark=spark)
    assert first.committed and not spark.catalog.tableExists("lakecat.late")
    again = run(config, spark=spark)
    assert spark.catalog.tableExists("lakecat.late")
    assert not again.committed and again.completed_earlier_attempt
    assert delta_version(table.location) == first.output_version


@pytest.mark.parametrize(
    ("sections", "message", "hint"),
    [
        ({"input": {"table": "lakecat.nowhere"}}, "input.table: no table named lakecat.nowhere", "spark.conf"),
        ({"output": {"table": "nodb.scores"}}, "its database nodb is not in Spark's catalog", "CREATE DATABASE"),
        ({"input": {"table": "lakecat.plain"}}, "lakecat.plain is a parquet table", "CONVERT TO DELTA"),
    ],
    ids=["unknown-input", "unknown-database", "not-delta"],
)
def test_bad_names_are_refused_before_anything_is_written(spark, lake, catalog_db, tmp_path, sections, message, hint):
    spark.sql(f"CREATE TABLE IF NOT EXISTS lakecat.plain (customer_id BIGINT) USING parquet LOCATION '{tmp_path}'")
    before = sorted(p.name for p in catalog_db.iterdir()) if catalog_db.exists() else []
    with pytest.raises(ConfigError) as e:
        run(_job(lake, **sections), spark=spark)
    assert message in str(e.value) and hint in (e.value.hint or "")
    assert (sorted(p.name for p in catalog_db.iterdir()) if catalog_db.exists() else []) == before


def test_readers_without_spark_refuse_a_name_and_say_how_to_find_the_location(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "scoring.cli", "show", "lakecat.scores"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "lakecat.scores reads as a table name in Spark's catalog" in done.stderr
    assert "DESCRIBE DETAIL lakecat.scores" in done.stderr and "Traceback" not in done.stderr


def test_names_survive_the_process_with_a_hive_metastore_and_a_crash_before_registering(lake, registry, tmp_path):
    """Two `scoring run` processes with a real Hive metastore (Derby): the first dies right after its commit, before
    it registered the new output's name; the second (same run id) registers it and commits nothing again."""
    warehouse = tmp_path / "warehouse"
    tree = lake.job("unused", output={"table": "default.scores"}, run_id="hive-1")
    tree["spark"]["conf"] = {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={tmp_path}/metastore_db;create=true",
    }
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "SCORING_FAULT": "after-output-commit"}

    def scoring(environment):
        return subprocess.run(
            [sys.executable, "-m", "scoring.cli", "run", str(config), "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environment,
            timeout=300,
            check=False,
        )

    died = scoring(env)
    assert died.returncode != 0
    location = warehouse / "scores"
    assert delta_version(location) == 0  # committed, under the default database's location
    env.pop("SCORING_FAULT")
    done = scoring(env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["output_table"] == "default.scores" and summary["committed"] is False
    assert delta_version(location) == 0
    assert len(read_delta(location)) == lake.table.num_rows
    assert (tmp_path / "metastore_db").is_dir()


def test_a_stream_reads_and_writes_tables_by_name(spark, lake, catalog_db, tmp_path):
    from scoring.modes import stream

    source = tmp_path / "events"
    demo.write_delta(source, make_table(400, seed=41), mode="append")
    spark.sql(f"CREATE TABLE IF NOT EXISTS lakecat.events USING delta LOCATION '{source}'")
    tree = lake.job("unused", input={"table": "lakecat.events"}, output={"table": "lakecat.stream_scores"})
    tree["stream"] = {"checkpoint": str(tmp_path / "ck")}
    record = stream.run(build_job_config(tree), spark=spark, available_now=True)
    assert record.rows_written == 400
    assert spark.catalog.tableExists("lakecat.stream_scores")  # registered after its first micro-batch
    out = read_delta(catalog_db / "stream_scores")
    assert sorted(out.column("customer_id").to_pylist()) == sorted(read_delta(source).column("customer_id").to_pylist())
