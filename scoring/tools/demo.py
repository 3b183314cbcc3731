"""A demo lake, a demo model in a local MLflow registry, and the helpers tests and benchmarks use to make their own.

Everything here is generated locally: no data set or model is downloaded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

_LOGGER = logging.getLogger(__name__)

DEMO_DIR = Path(".demo")
DEMO_MODEL = "churn"
DEMO_ALIAS = "champion"


def feature_names(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def make_features(
    rows: int,
    *,
    n_features: int = 20,
    days: int = 5,
    start: dt.date = dt.date(2026, 11, 1),
    seed: int = 7,
    key: str = "customer_id",
    dtype=np.float32,
) -> pa.Table:
    """`rows` rows: a unique int64 key, a ``ds`` date-string partition column spread over `days`, float features."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((rows, n_features)).astype(dtype)
    dates = np.array([(start + dt.timedelta(days=d)).isoformat() for d in range(days)])
    columns = {key: pa.array(np.arange(rows, dtype=np.int64)), "ds": pa.array(dates[np.arange(rows) % days])}
    for j, name in enumerate(feature_names(n_features)):
        columns[name] = pa.array(values[:, j])
    return pa.table(columns)


def labels(table: pa.Table, features: Sequence[str], seed: int = 11) -> np.ndarray:
    """A learnable binary target: a fixed linear rule plus noise."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([table.column(f).to_numpy() for f in features])
    weights = np.linspace(-1.0, 1.0, len(features))
    return (x @ weights + 0.3 * rng.standard_normal(len(x)) > 0).astype(np.int64)


def write_delta(
    path: str | Path, table: pa.Table, *, partition_by: Sequence[str] = ("ds",), mode: str = "overwrite"
) -> None:
    """Write `table` as a Delta table with delta-rs (no Spark needed)."""
    from deltalake import write_deltalake

    write_deltalake(str(path), table, partition_by=list(partition_by) or None, mode=mode)


def train_classifier(table: pa.Table, features: Sequence[str], sample: int = 5000, max_iter: int = 200):
    from sklearn.linear_model import LogisticRegression

    sub = table.slice(0, min(sample, table.num_rows))
    x = np.column_stack([sub.column(f).to_numpy() for f in features])
    return LogisticRegression(max_iter=max_iter).fit(x, labels(sub, features))


def train_regressor(table: pa.Table, features: Sequence[str], sample: int = 5000, hidden: tuple[int, ...] = ()):
    """A linear regressor, or an MLP when `hidden` layer sizes are given."""
    from sklearn.linear_model import LinearRegression
    from sklearn.neural_network import MLPRegressor

    sub = table.slice(0, min(sample, table.num_rows))
    x = np.column_stack([sub.column(f).to_numpy() for f in features])
    y = x @ np.linspace(-1.0, 1.0, len(features))
    model = MLPRegressor(hidden_layer_sizes=hidden, max_iter=50, random_state=0) if hidden else LinearRegression()
    return model.fit(x, y)


def _signature(table: pa.Table, features: Sequence[str], model):
    import pandas as pd
    from mlflow.models import infer_signature

    sample = table.slice(0, 5).select(list(features)).to_pandas()
    with warnings.catch_warnings():
        # A classifier's labels are integers and never missing: MLflow's hint about missing integers does not apply.
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column", UserWarning)
        return infer_signature(sample, pd.Series(model.predict(sample.to_numpy())))


_MLFLOW_CHATTER = ("Successfully registered model", "Created version", "Registered model")


@contextlib.contextmanager
def _mlflow_chatter_held() -> Iterator[None]:
    """MLflow prints each registration on stderr itself; unless scoring is verbose, leave those lines out and show the
    rest of what it printed (its warnings) afterwards."""
    from scoring.engine.progress import verbose

    if verbose():
        yield
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        lines = printed.getvalue().splitlines(keepends=True)
        sys.stderr.write("".join(line for line in lines if not line.startswith(_MLFLOW_CHATTER)))


def register(
    model,
    table: pa.Table,
    features: Sequence[str],
    *,
    name: str,
    alias: str | None = None,
    flavor: str = "onnx",
    tracking_uri: str | None = None,
) -> str:
    """Log `model` (an sklearn estimator) to MLflow as `flavor` (``onnx`` or ``sklearn``), register it under `name`,
    point `alias` at the new version, and return the version."""
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    signature = _signature(table, features, model)
    with _mlflow_chatter_held(), mlflow.start_run(run_name=f"train-{name}"):
        if flavor == "onnx":
            from scoring.adapters.onnx import sklearn_to_onnx

            info = mlflow.onnx.log_model(
                sklearn_to_onnx(model, len(features)), name="model", registered_model_name=name, signature=signature
            )
        elif flavor == "sklearn":
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=name, signature=signature, serialization_format="cloudpickle"
            )
        else:
            raise ValueError(f"flavor must be onnx or sklearn, not {flavor!r}")
    version = str(info.registered_model_version)
    if alias:
        MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def tracking_uri_for(directory: Path) -> str:
    return f"sqlite:///{(directory / 'mlflow.db').resolve()}"


def ensure_experiment(directory: Path, name: str = "scoring-demo") -> None:
    """Use an experiment whose artifacts live under `directory` (not in the current directory's ./mlruns)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri_for(directory))
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(directory / "mlartifacts").resolve().as_uri())
    mlflow.set_experiment(name)


def create_demo(directory: Path = DEMO_DIR, rows: int = 100_000, *, force: bool = False) -> dict[str, str]:
    """Create (once) the demo lake and the demo model under `directory`; returns what it made."""
    from mlflow import MlflowClient

    directory.mkdir(parents=True, exist_ok=True)
    table_path = directory / "lake" / "features"
    features = feature_names(20)
    ensure_experiment(directory)
    client = MlflowClient()
    have_model = bool(client.search_registered_models(filter_string=f"name = '{DEMO_MODEL}'"))
    if force or not (table_path / "_delta_log").exists() or not have_model:
        table = make_features(rows)
        write_delta(table_path, table)
        _LOGGER.info("wrote %d demo rows to %s", rows, table_path)
        version = register(train_classifier(table, features), table, features, name=DEMO_MODEL, alias=DEMO_ALIAS)
        _LOGGER.info("registered %s version %s as @%s", DEMO_MODEL, version, DEMO_ALIAS)
    return {
        "input_table": str(table_path),
        "tracking_uri": tracking_uri_for(directory),
        "model": f"models:/{DEMO_MODEL}@{DEMO_ALIAS}",
    }
