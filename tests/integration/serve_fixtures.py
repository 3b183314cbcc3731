"""Fixtures for ``scoring serve``'s integration tests: real batch output tables, real services on loopback, and the
model's own predict to compare live answers with.

Test modules load these as a plugin, so that every module shares the one scored table (a fixture function imported
into two modules would score it twice)::

    pytest_plugins = ["tests.integration.serve_fixtures"]

Fixtures:

- ``served`` (session): the batch job's output for an input where every key has a row on two days, scored by two
  runs of the real batch job (``input.where`` one day each), so that each key has two rows in the output, the later
  run's newest; ``served.job(**sections)`` is a job config tree over it (single key ``customer_id``).
- ``versioned`` (session): a model of its own (``serve_versioned``, two registered versions, the alias ``champion``
  on version 1) and a table scored by version 1; tests move the alias with ``versioned.point_alias(version)``, which
  no other module's model sees.

Helpers: :func:`serving` (a started ``OnlineService`` behind a real HTTP server on a free port, with an HTTP client),
:func:`newest_rows` (what a lookup must answer, computed from the table read with delta-rs), :func:`assert_record`,
:func:`own_predict` (onnxruntime on the ONNX model MLflow hands back), :func:`metric` (a value of ``/metrics``, parsed
with prometheus_client's parser) and :func:`kill_triton`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from scoring import build_job_config, columns, run
from scoring.core.index import key_text
from scoring.modes.http_api import Running
from scoring.modes.online import OnlineService
from scoring.tools import demo
from tests.integration.conftest import FEATURES, make_table, read_delta

DAY_A = "2026-11-01"
DAY_B = "2026-11-02"
KEYS = 1000
"""Keys in the served table: each has a row on DAY_A (scored by the first run) and on DAY_B (by the second)."""


def two_day_features(keys: int = KEYS) -> pa.Table:
    """Keys 0..keys-1, each with a row on DAY_A and one on DAY_B (different feature values)."""
    first = demo.make_features(keys, n_features=len(FEATURES), days=1, start=dt.date(2026, 11, 1), seed=21)
    second = demo.make_features(keys, n_features=len(FEATURES), days=1, start=dt.date(2026, 11, 2), seed=22)
    return pa.concat_tables([first, second])


@dataclasses.dataclass
class Served:
    """The batch output the online tests serve: two runs of the real batch job into one table."""

    root: Path
    input_table: str
    output_table: str
    features: pa.Table
    run_a: Any
    """The first run's record (DAY_A's rows)."""
    run_b: Any
    """The second run's record (DAY_B's rows): the newest row of every key."""
    lake: Any

    def job(self, output: str | None = None, /, **sections) -> dict:
        """A job config tree over `output` (default: the served table), single key ``customer_id``."""
        tree = self.lake.job(output or self.output_table, input={"table": self.input_table, "key": "customer_id"})
        for section, values in sections.items():
            tree[section] = {**tree.get(section, {}), **values} if isinstance(values, dict) else values
        return tree

    def rows(self) -> pa.Table:
        """The output table as delta-rs reads it."""
        return read_delta(self.output_table)


def score_into(spark, lake, input_table: str, output_table: str, where: str, **sections):
    """One run of the real batch job: `where`'s rows of `input_table` into `output_table` (partitioned by ds)."""
    tree = lake.job(output_table, input={"table": input_table, "key": ["customer_id", "ds"], "where": where})
    for section, values in sections.items():
        tree[section] = {**tree.get(section, {}), **values}
    return run(build_job_config(tree), spark=spark)


@pytest.fixture(scope="session")
def served(spark, lake, tmp_path_factory) -> Served:
    root = tmp_path_factory.mktemp("served")
    features = two_day_features()
    demo.write_delta(root / "features", features)
    output = str(root / "scores")
    run_a = score_into(spark, lake, str(root / "features"), output, f"ds = '{DAY_A}'")
    run_b = score_into(spark, lake, str(root / "features"), output, f"ds = '{DAY_B}'")
    return Served(root, str(root / "features"), output, features, run_a, run_b, lake)


@dataclasses.dataclass
class Versioned:
    """A model of the online tests' own, with two versions, and a table scored by version 1."""

    name: str
    v1: str
    v2: str
    table: str
    run: Any
    served: Served

    def point_alias(self, version: str) -> None:
        from mlflow import MlflowClient

        MlflowClient().set_registered_model_alias(self.name, "champion", version)

    def job(self, /, **sections) -> dict:
        return self.served.job(self.table, model={"uri": f"models:/{self.name}@champion"}, **sections)


@pytest.fixture(scope="session")
def versioned(spark, served, tmp_path_factory) -> Versioned:
    name = "serve_versioned"
    lake = served.lake
    v1 = demo.register(demo.train_classifier(lake.table, FEATURES), lake.table, FEATURES, name=name, alias="champion")
    other = make_table(3000, seed=41)  # other data: version 2 predicts differently from version 1
    v2 = demo.register(demo.train_classifier(other, FEATURES, max_iter=20), other, FEATURES, name=name)
    table = str(tmp_path_factory.mktemp("versioned") / "scores")
    record = score_into(
        spark, lake, served.input_table, table, f"ds = '{DAY_A}'", model={"uri": f"models:/{name}@champion"}
    )
    assert record.model_version == v1
    return Versioned(name, v1, v2, table, record, served)


# -- a running service ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Serving:
    service: OnlineService
    url: str
    client: httpx.Client


@contextlib.contextmanager
def serving(tree: dict, *, headers: dict[str, str] | None = None) -> Iterator[Serving]:
    """`tree`'s service, started, behind a real HTTP server on a free loopback port; stopped and closed after."""
    service = OnlineService(build_job_config(tree)).start()
    try:
        with Running(service) as running, httpx.Client(base_url=running.url, timeout=60, headers=headers) as client:
            yield Serving(service, running.url, client)
    finally:
        service.close()


# -- what the answers must be --------------------------------------------------------------------------------------


def newest_rows(table: pa.Table, key: Sequence[str] = ("customer_id",)) -> dict[Any, dict[str, Any]]:
    """Key (text, or a tuple of texts) -> the row with the latest ``scored_at`` among the key's rows."""
    chosen: dict[Any, dict[str, Any]] = {}
    for row in table.to_pylist():
        parts = tuple(key_text(row[c]) for c in key)
        k = parts[0] if len(parts) == 1 else parts
        if k not in chosen or row[columns.SCORED_AT] > chosen[k][columns.SCORED_AT]:
            chosen[k] = row
    return chosen


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_record(answer: dict[str, Any], row: dict[str, Any]) -> None:
    """`answer` (a precomputed score as served) holds exactly `row`'s lineage, partition and predictions."""
    assert answer["source"] == "precomputed", answer
    for name in (columns.MODEL_NAME, columns.MODEL_VERSION, columns.MODEL_URI, columns.SCORING_RUN_ID):
        assert answer[name] == row[name], (name, answer, row)
    scored_at = row[columns.SCORED_AT]
    scored_at = scored_at if scored_at.tzinfo else scored_at.replace(tzinfo=dt.UTC)
    assert parse_time(answer[columns.SCORED_AT]) == scored_at, (answer, row)
    assert answer["partition"] == {"ds": row["ds"]}
    assert set(answer["predictions"]) == {"label", "probabilities"}
    assert answer["predictions"]["label"] == row["label"]
    # the table stores float32; the served text must give back exactly that float32
    np.testing.assert_array_equal(
        np.asarray(answer["predictions"]["probabilities"], dtype=np.float32),
        np.asarray(row["probabilities"], dtype=np.float32),
    )


@functools.lru_cache(maxsize=8)
def _onnx_session(model_uri: str):
    import mlflow
    import onnxruntime

    return onnxruntime.InferenceSession(mlflow.onnx.load_model(model_uri).SerializeToString())


def own_predict(model_uri: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The registered ONNX model's own predict (onnxruntime on the model MLflow hands back): labels, probabilities."""
    label, proba = _onnx_session(model_uri).run(["label", "probabilities"], {"X": np.asarray(x, dtype=np.float32)})
    return label, proba


def feature_rows(table: pa.Table) -> list[dict[str, float]]:
    """Each row's features as a request's ``features`` object."""
    return table.select(FEATURES).to_pylist()


def matrix(rows: Sequence[dict[str, float]]) -> np.ndarray:
    return np.array([[row[f] for f in FEATURES] for row in rows], dtype=np.float32)


def assert_live(answers: Sequence[dict[str, Any]], rows: Sequence[dict[str, float]], model_uri: str) -> None:
    """Live answers hold the model's own predictions for `rows` (labels exactly, probabilities to float32)."""
    label, proba = own_predict(model_uri, matrix(rows))
    assert all(a["source"] == "live" and a["features_used"] for a in answers), answers
    assert [a["predictions"]["label"] for a in answers] == label.tolist()
    np.testing.assert_allclose(
        np.array([a["predictions"]["probabilities"] for a in answers]), proba, rtol=1e-6, atol=1e-7
    )


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` in Prometheus text `text` whose labels include `labels` (0 when none). The
    parser names a counter's samples ``<name>_total`` even where the text does not (Triton's): either is found."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, f"{name}_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# -- Triton --------------------------------------------------------------------------------------------------------


def kill_triton(handle) -> None:
    """Kill a private Triton server (SIGKILL to its process group at once) and remove the shared-memory regions its
    Python backend had made: a killed server cannot, and they would stay in /dev/shm."""
    import psutil

    from scoring.launchers import triton_server as ts

    regions = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(proc.pid) != handle.pid:
                continue
        except OSError:
            continue
        regions += [
            Path("/dev/shm") / a for a in proc.info["cmdline"] or () if a.startswith("triton_python_backend_shm")
        ]
    ts.stop_server(handle, timeout_s=0)
    for region in regions:
        region.unlink(missing_ok=True)
