"""Export a registered model version to a Triton model repository.

Layout written (Triton's own): ``<repository>/<model>/config.pbtxt`` and ``<repository>/<model>/<version>/...``,
where ``<version>`` is the MLflow version number, so the server serves exactly the version a run pins.

- target ``onnxruntime``: ``<version>/model.onnx`` for Triton's ONNX Runtime backend (NVIDIA's container on GPU nodes).
- target ``python``: ``<version>/model.onnx`` plus ``<version>/model.py`` (:mod:`scoring.adapters.triton_python_model`)
  for servers with only the Python backend, like the one bundled here.

ONNX models go as they are; scikit-learn models are converted with skl2onnx. The config is built as Triton's own
``ModelConfig`` protobuf and written in its text format, so it always parses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from scoring.adapters.registry import ModelRef
from scoring.config import TritonModelConfig
from scoring.errors import ModelError, require_extra

_LOGGER = logging.getLogger(__name__)

MARKER = ".scoring-export.json"

_ONNX_TO_TRITON = {1: "TYPE_FP32", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32", 10: "TYPE_FP16", 9: "TYPE_BOOL"}


@dataclasses.dataclass(frozen=True)
class ExportResult:
    model_name: str
    """Name the server knows the model by."""
    version: int
    path: str
    """``<repository>/<model>``"""
    target: str
    changed: bool
    """False when this version was already exported the same way (nothing was written)."""


def triton_model_name(ref: ModelRef) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", ref.name)


def _onnx_bytes(ref: ModelRef, n_features: int | None) -> bytes:
    local = Path(ref.local_path)
    if ref.is_onnx:
        import onnx
        import yaml

        conf = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["onnx"]
        # MLflow may keep large initializers in external data files beside model.onnx: loaded in here, so that the
        # exported model is one self-contained file (the repository gets model.onnx only)
        return onnx.load_model(str(local / conf.get("data", "model.onnx")), load_external_data=True).SerializeToString()
    if "sklearn" in ref.flavors:
        import mlflow.sklearn

        from scoring.adapters.onnx import sklearn_to_onnx

        if not n_features:
            raise ModelError(
                f"cannot convert {ref.uri} to ONNX: the number of features is unknown",
                hint="log the model with an MLflow signature that names its inputs, or pass input.features",
            )
        model = mlflow.sklearn.load_model(str(local))
        try:
            return sklearn_to_onnx(model, n_features).SerializeToString()
        except Exception as e:  # skl2onnx raises many kinds for unsupported estimators
            raise ModelError(
                f"cannot convert {ref.uri} ({type(model).__name__}) to ONNX with skl2onnx: {e}",
                hint="register an ONNX version of the model, or score it with runtime.backend: embedded",
            ) from e
    raise ModelError(
        f"cannot export {ref.uri}: flavors {list(ref.flavors)} have no ONNX form",
        hint="export works for ONNX and scikit-learn models; score others with runtime.backend: embedded",
    )


def _dims(shape, batched: bool) -> tuple[list[int], bool]:
    """Triton dims (without the batch dimension) for an ONNX tensor shape; True when a reshape to [] is needed."""
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]
    if batched:
        dims = dims[1:]
    if not dims:
        return [1], True
    return dims, False


def build_config(name: str, onnx_model, target: str, model: TritonModelConfig, versions: Sequence[int]):
    """Triton's ``ModelConfig`` for `onnx_model` (an ``onnx.ModelProto``)."""
    from tritonclient.grpc import model_config_pb2 as mc

    config = mc.ModelConfig(name=name, max_batch_size=model.max_batch_size)
    if target == "onnxruntime":
        config.platform = "onnxruntime_onnx"
        config.backend = "onnxruntime"
    else:
        config.backend = "python"
        config.parameters["intra_op_threads"].string_value = "1"
    for source, dest in ((onnx_model.graph.input, config.input), (onnx_model.graph.output, config.output)):
        for tensor in source:
            kind = tensor.type.tensor_type.elem_type
            if kind not in _ONNX_TO_TRITON:
                raise ModelError(
                    f"ONNX tensor {tensor.name!r} has element type {kind}, which cannot be exported",
                    hint="export the model with plain numeric tensors (skl2onnx: options={'zipmap': False})",
                )
            dims, reshape = _dims(tensor.type.tensor_type.shape, batched=True)
            entry = dest.add(name=tensor.name, data_type=mc.DataType.Value(_ONNX_TO_TRITON[kind]), dims=dims)
            if reshape and target == "onnxruntime":  # the model makes [batch]; Triton shows [batch, 1]
                entry.reshape.shape.extend([])
                entry.reshape.SetInParent()
    batching = config.dynamic_batching
    batching.SetInParent()
    batching.preferred_batch_size.extend(model.preferred_batch_sizes)
    batching.max_queue_delay_microseconds = model.max_queue_delay_us
    if model.max_queue_size or model.queue_timeout_us:
        policy = batching.default_queue_policy
        policy.max_queue_size = model.max_queue_size
        policy.default_timeout_microseconds = model.queue_timeout_us
        policy.timeout_action = mc.ModelQueuePolicy.REJECT
    group = config.instance_group.add(count=model.instance_count)
    group.kind = mc.ModelInstanceGroup.Kind.Value(model.instance_kind)
    config.version_policy.specific.versions.extend(sorted(versions))
    return config


def export_model(
    ref: ModelRef,
    repository: str | Path,
    *,
    target: Literal["onnxruntime", "python"] = "python",
    model_config: TritonModelConfig | None = None,
    n_features: int | None = None,
) -> ExportResult:
    """Write `ref` into `repository` for Triton. Exporting the same version the same way again writes nothing."""
    require_extra("triton", "exporting a model for Triton (scoring export)")
    import onnx
    from google.protobuf import text_format

    model_config = model_config or TritonModelConfig()
    name = triton_model_name(ref)
    model_dir = Path(repository) / name
    version_dir = model_dir / ref.version
    data = _onnx_bytes(ref, n_features)
    marker = {
        "model_uri": ref.uri,
        "target": target,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "model_config": model_config.model_dump(),
    }
    onnx_model = onnx.load_model_from_string(data)
    versions = {int(ref.version)} | {
        int(p.name) for p in model_dir.glob("*") if p.name.isdigit() and (p / MARKER).exists()
    }
    config_text = text_format.MessageToString(build_config(name, onnx_model, target, model_config, sorted(versions)))
    config_path = model_dir / "config.pbtxt"
    same_version = (version_dir / MARKER).exists() and json.loads((version_dir / MARKER).read_text()) == marker
    same_config = config_path.exists() and config_path.read_text() == config_text
    if same_version and same_config:
        _LOGGER.info("%s version %s already exported to %s", name, ref.version, model_dir)
        return ExportResult(name, int(ref.version), str(model_dir), target, changed=False)
    staging = model_dir / f".{ref.version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(data)
    if target == "python":
        shutil.copyfile(Path(__file__).with_name("triton_python_model.py"), staging / "model.py")
    (staging / MARKER).write_text(json.dumps(marker, indent=2))
    shutil.rmtree(version_dir, ignore_errors=True)
    staging.rename(version_dir)
    config_path.write_text(config_text)
    _LOGGER.info("exported %s as %s version %s (%s) to %s", ref.uri, name, ref.version, target, model_dir)
    return ExportResult(name, int(ref.version), str(model_dir), target, changed=True)
