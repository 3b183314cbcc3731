"""Real local Spark with Delta, a real MLflow registry in a temporary SQLite file, real Delta tables on disk."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scoring.tools import demo

FEATURES = demo.feature_names(5)
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")


@pytest.fixture(scope="session")
def spark():
    from scoring.adapters.spark import get_session, kafka_package

    # One session for the whole suite, started with Spark's Kafka connector too (the stream tests read and write Kafka).
    session = get_session(
        "local[2]",
        {
            "spark.sql.shuffle.partitions": "1",
            "spark.default.parallelism": "2",
            "spark.jars.packages": kafka_package(),
        },
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> str:
    """A real MLflow tracking server-less registry: SQLite in a temporary folder; MLFLOW_TRACKING_URI points at it."""
    import mlflow

    directory = tmp_path_factory.mktemp("mlflow")
    demo.ensure_experiment(directory, "scoring-tests")
    uri = demo.tracking_uri_for(directory)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    mlflow.set_tracking_uri(None)


@dataclasses.dataclass
class Lake:
    """The test lake: one partitioned input table plus the models trained on it."""

    root: Path
    input_table: str
    table: pa.Table
    sklearn_model: object
    onnx_source_model: object

    def job(self, output_name: str, /, **sections) -> dict:
        """A job config tree for `output` (a name under the lake), with sections overridden."""
        tree = {
            "name": "test",
            "input": {"table": self.input_table, "key": "customer_id"},
            "model": {"uri": "models:/onnx_clf@champion"},
            "output": {"table": str(self.root / output_name), "partition_by": ["ds"]},
            "spark": {"master": "local[2]"},
        }
        for section, values in sections.items():
            if isinstance(values, dict):
                tree[section] = {**tree.get(section, {}), **values}
            else:
                tree[section] = values
        return tree


def make_table(rows: int, seed: int = 3) -> pa.Table:
    return demo.make_features(rows, n_features=len(FEATURES), days=len(DAYS), seed=seed)


@pytest.fixture(scope="session")
def lake(tmp_path_factory, registry) -> Lake:
    root = tmp_path_factory.mktemp("lake")
    table = make_table(3000)
    demo.write_delta(root / "features", table)
    clf = demo.train_classifier(table, FEATURES)
    demo.register(clf, table, FEATURES, name="onnx_clf", alias="champion", flavor="onnx")
    skl = demo.train_classifier(table, FEATURES, max_iter=50)
    demo.register(skl, table, FEATURES, name="skl_clf", alias="champion", flavor="sklearn")
    return Lake(root=root, input_table=str(root / "features"), table=table, sklearn_model=skl, onnx_source_model=clf)


def read_delta(path) -> pa.Table:
    """Read a table with delta-rs: an independent reader, not the Spark that wrote it. Its files are read through
    pyarrow's local filesystem (see scoring.adapters.deltalog.Snapshot.dataset: delta-rs's own aborts at exit)."""
    import pyarrow.fs as pfs
    from deltalake import DeltaTable

    local = pfs.SubTreeFileSystem(str(Path(path).resolve()), pfs.LocalFileSystem())
    return DeltaTable(str(path)).to_pyarrow_table(filesystem=local)


def delta_version(path) -> int | None:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(str(path)).version()
    except TableNotFoundError:
        return None


def features_of(table: pa.Table) -> np.ndarray:
    return np.column_stack([table.column(f).to_numpy() for f in FEATURES])
