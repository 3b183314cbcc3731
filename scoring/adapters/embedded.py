"""The embedded runtime: the model runs inside each Python worker (onnxruntime for ONNX, MLflow pyfunc otherwise)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa

from scoring.core.batching import feature_matrix, name_outputs
from scoring.core.tensors import TensorLayout, feed, input_names, layouts
from scoring.errors import ModelError

_LOGGER = logging.getLogger(__name__)

_ONNX_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float16)": np.float16,
}


@dataclasses.dataclass(frozen=True)
class EmbeddedSpec:
    """Everything a worker needs to load the model; hashable, so it keys the per-worker cache."""

    model_uri: str
    """``models:/<name>/<version>``, for messages and for downloading where `local_path` is missing."""
    local_path: str
    flavors: tuple[str, ...]
    features: tuple[str, ...]
    threads: int = 1
    tracking_uri: str | None = None
    registry_uri: str | None = None
    spark_file: str | None = None
    """The model's archive among the files Spark ships to the executors (``SparkContext.addArchive``, see
    :func:`scoring.adapters.spark.ship_model_files`), when the run shipped it: a worker loads the copy Spark unpacked
    beside it, not the driver's `local_path` and not the registry. None under a local master."""
    tensors: tuple[TensorLayout, ...] = ()
    """Which model input each feature column feeds, and the array lengths to pad to (``input.tensors``); empty: each
    column feeds the input of its own name."""

    def create(self):
        return load_predictor(self)


class OnnxPredictor:
    """onnxruntime on the model's ``model.onnx``; one session per process, inputs fed without pandas."""

    def __init__(self, path: Path, spec: EmbeddedSpec) -> None:
        import onnxruntime as ort
        import yaml

        conf = yaml.safe_load((path / "MLmodel").read_text())["flavors"]["onnx"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(path / conf.get("data", "model.onnx")), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._features = spec.features
        self._model = spec.model_uri
        self._layout = spec.tensors or layouts(spec.features, None)
        self._inputs = self._session.get_inputs()
        self._outputs = [o.name for o in self._session.get_outputs() if o.type.startswith("tensor(")]
        if not self._outputs:
            raise ModelError(
                f"ONNX model {spec.model_uri} has no tensor outputs",
                hint="export it without ZipMap (skl2onnx: options={'zipmap': False})",
            )
        fed = input_names(self._layout)
        self._matrix = (
            len(self._inputs) == 1 and len(self._inputs[0].shape or ()) == 2 and fed != (self._inputs[0].name,)
        )
        if not self._matrix:
            missing = [i.name for i in self._inputs if i.name not in fed]
            if missing:
                raise ModelError(
                    f"ONNX model {spec.model_uri} has inputs {missing} that are not among the features {list(spec.features)}",
                    hint="name the model's inputs in input.features, or map a column of another name to each with "
                    "input.tensors.<column>.input",
                )
        else:
            width = self._inputs[0].shape[1]
            if isinstance(width, int) and width != len(spec.features):
                raise ModelError(
                    f"ONNX model {spec.model_uri} takes {width} features per row, the job gives {len(spec.features)}: "
                    f"{list(spec.features)}",
                    hint="set input.features to the model's feature columns, in training order; an array column "
                    "feeds the input of its own name (or map it with input.tensors.<column>.input)",
                )

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        if self._matrix:
            inp = self._inputs[0]
            feeds = {inp.name: feature_matrix(features, self._features, _ONNX_NUMPY.get(inp.type, np.float32))}
        else:
            by_name = {i.name: i for i in self._inputs}
            feeds = {
                t.input: feed(
                    features.column(t.column),
                    t,
                    _ONNX_NUMPY.get(by_name[t.input].type, np.float32),
                    by_name[t.input].shape,
                    self._model,
                )
                for t in self._layout
                if t.input in by_name
            }
        results = self._session.run(self._outputs, feeds)
        return name_outputs(dict(zip(self._outputs, results, strict=True)), features.num_rows)


class PyfuncPredictor:
    """Any MLflow model through ``mlflow.pyfunc``: a pandas DataFrame of the feature columns in, predictions out."""

    def __init__(self, path: Path, spec: EmbeddedSpec) -> None:
        import mlflow.pyfunc

        self._model = mlflow.pyfunc.load_model(str(path))
        schema = self._model.metadata.get_input_schema()
        names = schema.input_names() if schema is not None and schema.has_input_names() else None
        if names is not None and sorted(names) != sorted(spec.features):
            raise ModelError(
                f"model {spec.model_uri} takes the features {list(names)} (its MLflow signature), "
                f"the job gives {list(spec.features)}",
                hint="set input.features to the model's feature columns, or leave it out to use the signature",
            )

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        import pandas as pd

        frame = features.to_pandas()
        result = self._model.predict(frame)
        if isinstance(result, pd.DataFrame):
            outputs = {str(c): result[c].to_numpy() for c in result.columns}
        elif isinstance(result, pd.Series):
            outputs = {str(result.name or "prediction"): result.to_numpy()}
        elif isinstance(result, dict):
            outputs = {str(k): np.asarray(v) for k, v in result.items()}
        else:
            outputs = {"prediction": np.asarray(result)}
        return name_outputs(outputs, features.num_rows)


def _shipped(name: str) -> Path | None:
    """The folder Spark unpacked archive `name` into, in this process's SparkFiles root, if it is there."""
    try:
        from pyspark import SparkFiles

        root = SparkFiles.getRootDirectory()
    except Exception:  # no SparkContext here, or not a Spark process
        return None
    folder = Path(root) / name
    return folder if (folder / "MLmodel").exists() else None


def _local_files(spec: EmbeddedSpec) -> Path:
    """Where a worker loads the model from: the copy Spark shipped to it (a cluster run), else the driver's download
    (a local run, or a host that shares the driver's folder), else the registry (one download per worker)."""
    shipped = _shipped(spec.spark_file) if spec.spark_file else None
    if shipped is not None:
        return shipped
    path = Path(spec.local_path)
    if (path / "MLmodel").exists():
        return path
    # A worker on another host: fetch the same immutable version from the registry.
    from scoring.adapters.registry import resolve_model

    return Path(resolve_model(spec.model_uri, spec.tracking_uri, spec.registry_uri).local_path)


def load_predictor(spec: EmbeddedSpec):
    """A predictor for `spec`: onnxruntime when the model has an ONNX flavor, pyfunc otherwise."""
    path = _local_files(spec)
    try:
        if "onnx" in spec.flavors:
            return OnnxPredictor(path, spec)
        return PyfuncPredictor(path, spec)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load {spec.model_uri} from {path}: {type(e).__name__}: {e}") from e
