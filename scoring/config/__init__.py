"""The job config: one frozen, strict tree, loaded from YAML and validated once, at the edge.

A job config names an input Delta table, an MLflow model and an output Delta table (see ``conf/jobs/demo.yaml``).
Every refusal is a :class:`~scoring.errors.ConfigError` (exit code 2) that names the file (or the ``--set``), the dotted
key, and, when it helps, the line and how to fix it. Refused:

- unknown keys (with a "did you mean" hint), wrong types, missing keys, values out of range;
- a key given twice in one mapping (YAML alone would silently keep the last one);
- keys that are not plain text (``1:``, ``null:``, ``yes:``, ``[a]:``, ``? {a: 1}``): quote them if they are names;
- a value YAML reads as something other than the text it looks like, where text is expected (``table: 2026-11-24``
  is a date, ``where: yes`` a boolean): quote it; likewise a boolean where a number is expected;
- numbers that are not finite (``.inf``, ``.nan``, ``1e999``): every number in a job config is finite;
- tags other than plain YAML's (``!!binary``, ``!!set``, ``!!python/...``, ``!custom``);
- nesting deeper than :data:`MAX_DEPTH` levels, recursive aliases, and aliases that repeat more than
  :data:`MAX_ALIAS_VALUES` values in all (a "billion laughs" document); files over :data:`MAX_FILE_BYTES`, or not
  UTF-8 text.

Anchors, aliases and merge keys (``<<: *defaults``) are allowed within those limits; a key of the mapping itself
overrides a merged one, as YAML says.

Any key can be overridden with ``key.path=value`` strings (the CLI's ``--set``), whose values are parsed as YAML
(``3`` is an int, ``[a, b]`` a list); a value that is not valid YAML is refused (quote it to pass it as text). A path
may index an existing list (``quality.input.expectations.0.min=3``); under ``spark.conf`` the rest of the path is one
Spark key (``spark.conf.spark.driver.memory=4g``); a section set to null in the file can be filled by ``--set``.

String values (not keys) may use ``${VAR}`` or ``${VAR:-default}`` to read the environment, once (a variable's value
is not expanded again, and defaults do not nest); ``$${`` is a literal ``${``, and any other ``${`` is refused.
Loaded for manifests (``keep_env_refs=True``, ``scoring render k8s``), the values in :data:`MANIFEST_ENV_PATHS` keep
their ``${VAR}`` as written (the pods expand them, from their own environment), and a variable unset elsewhere is left
as written instead of refused.

The package, one module per section, the loader on its own:

- :mod:`~scoring.config.base`: the limits (``MAX_*``), the strict base model, the checked number types;
- :mod:`~scoring.config.input`, :mod:`~scoring.config.model`, :mod:`~scoring.config.runtime`,
  :mod:`~scoring.config.output`, :mod:`~scoring.config.quality`, :mod:`~scoring.config.schedule`,
  :mod:`~scoring.config.spark`, :mod:`~scoring.config.stream`, :mod:`~scoring.config.serve`,
  :mod:`~scoring.config.kubernetes`: one section each;
- :mod:`~scoring.config.job`: :class:`JobConfig`, the whole tree;
- :mod:`~scoring.config.strict_yaml`: reading the YAML strictly;
- :mod:`~scoring.config.loader`: ``${VAR}``, ``--set``, validation and located errors (:func:`load_job_config`).

Everything is imported from here (``from scoring.config import JobConfig, load_job_config``).
"""

from __future__ import annotations

from scoring.config.base import (
    MAX_ALIAS_VALUES,
    MAX_BATCH_ROWS,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_RETRIES,
    MAX_SECONDS,
    MAX_THREADS,
)
from scoring.config.input import InputConfig, TensorInputConfig
from scoring.config.job import JobConfig
from scoring.config.kubernetes import (
    KubernetesConfig,
    KubernetesDriverConfig,
    KubernetesDynamicAllocationConfig,
    KubernetesExecutorConfig,
    KubernetesPodConfig,
    KubernetesSecretKeyConfig,
    KubernetesSidecarConfig,
    KubernetesTolerationConfig,
)
from scoring.config.loader import _ENV, MANIFEST_ENV_PATHS, build_job_config, load_job_config, parse_overrides
from scoring.config.model import ModelConfig
from scoring.config.output import OutputConfig
from scoring.config.quality import ExpectationConfig, GateConfig, QualityConfig
from scoring.config.runtime import EmbeddedConfig, RuntimeConfig, TritonConfig, TritonModelConfig
from scoring.config.schedule import ScheduleConfig
from scoring.config.serve import RedisIndexConfig, ServeConfig
from scoring.config.spark import SparkConfig
from scoring.config.stream import KafkaSinkConfig, KafkaSourceConfig, StreamConfig

__all__ = [
    "MANIFEST_ENV_PATHS",
    "MAX_ALIAS_VALUES",
    "MAX_BATCH_ROWS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_RETRIES",
    "MAX_SECONDS",
    "MAX_THREADS",
    "_ENV",
    "EmbeddedConfig",
    "ExpectationConfig",
    "GateConfig",
    "InputConfig",
    "JobConfig",
    "KafkaSinkConfig",
    "KafkaSourceConfig",
    "KubernetesConfig",
    "KubernetesDriverConfig",
    "KubernetesDynamicAllocationConfig",
    "KubernetesExecutorConfig",
    "KubernetesPodConfig",
    "KubernetesSecretKeyConfig",
    "KubernetesSidecarConfig",
    "KubernetesTolerationConfig",
    "ModelConfig",
    "OutputConfig",
    "QualityConfig",
    "RedisIndexConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "ServeConfig",
    "SparkConfig",
    "StreamConfig",
    "TensorInputConfig",
    "TritonConfig",
    "TritonModelConfig",
    "build_job_config",
    "load_job_config",
    "parse_overrides",
]
