"""Resolve the model once, to an immutable version, and settle which columns it takes."""

from __future__ import annotations

import dataclasses
import datetime as dt

from scoring.adapters import registry
from scoring.config import JobConfig
from scoring.core.stamp import Lineage
from scoring.core.tensors import input_names, layouts
from scoring.errors import ConfigError, ModelError


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    """A resolved model version and the feature columns it takes, in order."""

    ref: registry.ModelRef
    features: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def version(self) -> str:
        return self.ref.version

    @property
    def uri(self) -> str:
        return self.ref.uri

    def lineage(self, *, run_id: str, scored_at: dt.datetime, input_version: int | None = None) -> Lineage:
        """What every row of one unit of work is stamped with: a batch run, a micro-batch (with the source's Delta
        version), or an online request (no input version)."""
        return Lineage(self.name, self.version, self.uri, input_version, run_id, scored_at)


def prepare_model(config: JobConfig, *, uri: str | None = None) -> PreparedModel:
    """Resolve ``model.uri`` (or `uri`, e.g. the exact version a committed attempt used) and its features."""
    ref = registry.resolve_model(uri or config.model.uri, config.model.tracking_uri, config.model.registry_uri)
    return PreparedModel(ref, resolve_features(config, ref))


def resolve_features(config: JobConfig, model: registry.ModelRef) -> tuple[str, ...]:
    """``input.features`` checked against the model's MLflow signature, or the signature's names when not given
    (a column that ``input.tensors`` maps to an input of another name is compared, and found, by that name)."""
    return _known_tensor_columns(config, _resolve_features(config, model))


def _resolve_features(config: JobConfig, model: registry.ModelRef) -> tuple[str, ...]:
    signature = registry.signature_inputs(model)
    if config.input.features is not None:
        features = tuple(config.input.features)
        if signature is not None:
            expected = [name for name, _ in signature]
            if sorted(expected) != sorted(input_names(layouts(features, config.input.tensors))):
                raise ModelError(
                    f"model {model.uri} expects features {expected} (its MLflow signature), "
                    f"but input.features is {list(features)}",
                    hint="make input.features match the model's signature, or leave input.features out to use it",
                )
        return features
    if signature is None:
        raise ModelError(
            f"model {model.uri} has no named inputs in its MLflow signature, so the features are unknown",
            hint="list the feature columns in input.features, in the order the model was trained on",
        )
    column_of = {t.input: c for c, t in config.input.tensors.items() if t.input}
    return tuple(column_of.get(name, name) for name, _ in signature)


def _known_tensor_columns(config: JobConfig, features: tuple[str, ...]) -> tuple[str, ...]:
    """`features`, once every column ``input.tensors`` names is among them."""
    unknown = [c for c in config.input.tensors if c not in features]
    if unknown:
        raise ConfigError(
            f"input.tensors names column(s) {unknown}, which are not among the features {list(features)}",
            hint="list each array column in input.features too, or fix its name under input.tensors",
        )
    return features
