"""MLflow registry: resolve ``models:/name@alias`` once to an immutable version, and fetch its files."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from scoring.errors import ModelError

_LOGGER = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where downloaded model versions are kept: ``$SCORING_CACHE_DIR``, default ``~/.cache/scoring``."""
    return Path(os.environ.get("SCORING_CACHE_DIR") or Path.home() / ".cache" / "scoring")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A registered model version, resolved once per run. `uri` never holds an alias."""

    name: str
    version: str
    uri: str
    """``models:/<name>/<version>``"""
    requested_uri: str
    """What the config asked for, e.g. ``models:/churn@champion``."""
    local_path: str
    """Where the model's files are on this machine (downloaded once per registry, name and version)."""
    flavors: tuple[str, ...]
    tracking_uri: str
    registry_uri: str
    source_run_id: str | None = None

    @property
    def is_onnx(self) -> bool:
        return "onnx" in self.flavors


_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")


def _uris(tracking_uri: str | None, registry_uri: str | None) -> tuple[str, str]:
    import mlflow

    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()
    registry = registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or tracking
    return tracking, registry


def resolve_model(uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> ModelRef:
    """Resolve `uri` to one model version and make its files available locally."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    match = _URI.fullmatch(uri)
    if match is None:
        raise ModelError(
            f"{uri!r} is not a registry model URI", hint="use models:/<name>@<alias> or models:/<name>/<version>"
        )
    tracking, registry = _uris(tracking_uri, registry_uri)
    client = MlflowClient(tracking_uri=tracking, registry_uri=registry)
    name = match["name"]
    try:
        if match["alias"]:
            mv = client.get_model_version_by_alias(name, match["alias"])
        else:
            mv = client.get_model_version(name, match["version"])
    except MlflowException as e:
        known = _known_models(client)
        raise ModelError(
            f"cannot resolve {uri} in the registry at {registry}: {e.message}",
            hint=f"check the model name and alias/version (registered models: {known}); "
            "set model.registry_uri or MLFLOW_REGISTRY_URI if this is the wrong registry",
        ) from None
    version = str(mv.version)
    local = _download(client, tracking, registry, name, version)
    return ModelRef(
        name=name,
        version=version,
        uri=f"models:/{name}/{version}",
        requested_uri=uri,
        local_path=str(local),
        flavors=tuple(_flavors(local)),
        tracking_uri=tracking,
        registry_uri=registry,
        source_run_id=mv.run_id,
    )


def _known_models(client) -> str:
    try:
        names = sorted(m.name for m in client.search_registered_models(max_results=20))
    except Exception:  # the registry itself may be unreachable; the original error says so
        return "unknown"
    return ", ".join(names) or "none"


def _flavors(local: Path) -> list[str]:
    import yaml

    meta = yaml.safe_load((local / "MLmodel").read_text())
    return list(meta.get("flavors", {}))


def _download(client, tracking: str, registry: str, name: str, version: str) -> Path:
    """Versions are immutable, so a downloaded copy is reused; the copy appears whole or not at all."""
    import mlflow.artifacts

    registry_key = hashlib.sha256(registry.encode()).hexdigest()[:12]
    target = cache_dir() / "models" / registry_key / name / version
    if (target / "MLmodel").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        _LOGGER.info("downloading models:/%s/%s from %s", name, version, registry)
        source = client.get_model_version_download_uri(name, version)
        mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging), tracking_uri=tracking)
        found = next(staging.rglob("MLmodel"), None)
        if found is None:
            raise ModelError(
                f"models:/{name}/{version} has no MLmodel file at {source}", hint="register an MLflow model"
            )
        try:
            found.parent.rename(target)
        except OSError:  # another process won the race; its copy is identical
            if not (target / "MLmodel").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def signature_inputs(ref: ModelRef) -> list[tuple[str, str]] | None:
    """``[(column, type), ...]`` from the model's MLflow signature when it names its inputs, else None."""
    from mlflow.models import Model

    signature = Model.load(str(Path(ref.local_path) / "MLmodel")).signature
    if signature is None or signature.inputs is None or not signature.inputs.has_input_names():
        return None
    out = []
    for spec in signature.inputs.inputs:
        kind = getattr(spec, "type", None)
        out.append((spec.name, getattr(kind, "name", str(kind))))
    return out
