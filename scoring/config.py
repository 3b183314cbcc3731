"""The job config: one frozen, strict tree, loaded from YAML and validated once, at the edge.

A job config names an input Delta table, an MLflow model and an output Delta table (see ``conf/jobs/demo.yaml``).
Unknown keys, wrong types and missing keys are :class:`~scoring.errors.ConfigError`s that name the file and the dotted
key, with a "did you mean" hint. Any key can be overridden with ``key.path=value`` strings (the CLI's ``--set``), whose
values are parsed as YAML (``3`` is an int, ``[a, b]`` a list). String values may use ``${VAR}`` or ``${VAR:-default}``
to read the environment.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scoring.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class InputConfig(_Strict):
    table: str
    """Path (or URI) of the input Delta table."""
    key: list[str] = Field(min_length=1)
    """Key column(s) that identify a row; copied to the output. A string or a list."""
    features: list[str] | None = None
    """Feature columns, in the order the model takes them. When omitted, taken from the model's MLflow signature."""
    where: str | None = None
    """Optional Spark SQL filter on the input, e.g. ``ds = '2026-11-24'``."""
    version: int | None = Field(default=None, ge=0)
    """Delta version to read. By default the latest version at the start of the run, which is then recorded."""
    on_invalid_rows: Literal["fail", "skip"] = "fail"
    """Rows with a null or NaN feature: ``fail`` the run (nothing is written), or ``skip`` them (they are counted as
    rejected in the summary, and the rest is scored)."""

    _listify = field_validator("key", "features", mode="before")(_as_list)


class ModelConfig(_Strict):
    uri: str
    """MLflow registry URI: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``. Resolved once per run."""
    tracking_uri: str | None = None
    """MLflow tracking URI. Default: ``MLFLOW_TRACKING_URI`` from the environment."""
    registry_uri: str | None = None
    """MLflow registry URI. Default: ``MLFLOW_REGISTRY_URI``, else the tracking URI."""

    @field_validator("uri")
    @classmethod
    def _registry_uri(cls, value: str) -> str:
        if not re.fullmatch(r"models:/[^/@]+(/\d+|@[^/@]+)", value):
            raise ValueError(
                f"{value!r} is not a registry model URI; use models:/<name>@<alias> or models:/<name>/<version>"
            )
        return value


class EmbeddedConfig(_Strict):
    threads: int = Field(default=1, ge=1)
    """Threads per model session in each Python worker (onnxruntime ``intra_op_num_threads``). One is fastest when
    Spark already runs one worker per core."""


class TritonModelConfig(_Strict):
    """What goes into the exported model's ``config.pbtxt`` (Triton's model configuration)."""

    max_batch_size: int = Field(default=65_536, ge=1)
    """Largest batch the server hands the model at once (requests are merged up to this many rows)."""
    preferred_batch_sizes: list[int] = []
    """Batch sizes the dynamic batcher aims for; empty lets it merge up to ``max_batch_size``."""
    max_queue_delay_us: int = Field(default=500, ge=0)
    """How long the dynamic batcher waits for more requests to merge, in microseconds."""
    max_queue_size: int = Field(default=0, ge=0)
    """Requests the server queues per model before it rejects new ones as overloaded (0: unbounded)."""
    queue_timeout_us: int = Field(default=0, ge=0)
    """A queued request older than this is rejected (0: never)."""
    instance_count: int = Field(default=1, ge=1)
    """Model instances the server runs (concurrent executions)."""
    instance_kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    """Where instances run: ``KIND_GPU`` on a GPU node."""


class TritonConfig(_Strict):
    url: str | None = None
    """Server address, ``host:port``. Default: ``127.0.0.1:8001`` for gRPC, ``127.0.0.1:8000`` for HTTP
    (a co-located sidecar shares the worker's loopback)."""
    protocol: Literal["grpc", "http"] = "grpc"
    """Transport. gRPC is thread-safe and keeps several requests in flight on one connection."""
    shared_memory: Literal["none", "system"] = "none"
    """``system``: tensors travel through a POSIX shared-memory region (``/dev/shm``) registered once per worker
    instead of over the socket; the server must run on the same host (a sidecar does)."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of each request, in seconds, and the longest wait for the server to be ready."""
    max_retries: int = Field(default=3, ge=0)
    """Retries of a request that failed transiently (unavailable, deadline exceeded, overloaded), with exponential
    backoff and jitter. Permanent failures (unknown model, bad shape) fail at once."""
    batch_rows: int = Field(default=10_000, ge=1)
    """Rows per request; an Arrow batch larger than this is split."""
    max_inflight: int = Field(default=2, ge=1)
    """Requests in flight per Python worker, so the server's dynamic batcher has work to merge."""
    launch: Literal["external", "auto"] = "external"
    """``external``: a server is already serving the model at ``url``. ``auto``: if a server at ``url`` (when given)
    already serves the resolved version, use it; otherwise export the model to ``repository``, start a local sidecar
    on free loopback ports, wait for it to be ready, and stop it at the end of the run."""
    repository: str | None = None
    """Model repository for ``launch: auto`` (default: a temporary folder removed after the run)."""
    target: Literal["python", "onnxruntime"] = "python"
    """Export target for ``launch: auto``: ``python`` runs on the Triton bundled here; ``onnxruntime`` needs a server
    with the ONNX Runtime backend (NVIDIA's container image)."""
    model: TritonModelConfig = TritonModelConfig()


class RuntimeConfig(_Strict):
    backend: Literal["embedded", "triton"] = "embedded"
    """Where the model runs. ``embedded``: in each Spark Python worker (onnxruntime for ONNX models, MLflow pyfunc
    otherwise). ``triton``: in a Triton Inference Server beside the workers (see ``runtime.triton``)."""
    batch_rows: int = Field(default=10_000, ge=1)
    """Rows per Arrow batch sent to the model (Spark's ``spark.sql.execution.arrow.maxRecordsPerBatch``)."""
    embedded: EmbeddedConfig = EmbeddedConfig()
    triton: TritonConfig = TritonConfig()


class OutputConfig(_Strict):
    table: str
    """Path (or URI) of the output Delta table. Created on the first run."""
    partition_by: list[str] = []
    """Partition columns (input columns copied to the output). A run replaces exactly the (key, partition) rows it
    selected and keeps every other row; the first run creates the table with this partitioning."""
    on_invalid_predictions: Literal["fail", "quarantine"] = "fail"
    """A prediction that is NaN or infinite: ``fail`` the run naming the row's key (nothing is written), or
    ``quarantine`` the row (it goes to the quarantine table with the reason, and the rest is written)."""

    _listify = field_validator("partition_by", mode="before")(_as_list)


class ExpectationConfig(_Strict):
    """One data-quality expectation, run with Great Expectations on the Spark DataFrame (nothing is collected).

    Row-level types (``not_null``, ``between``, ``in_set``) can quarantine the rows that fail them; table-level types
    (``unique``, ``row_count_between``, ``mean_between``) pass or fail the whole gate.
    """

    type: Literal["not_null", "between", "in_set", "unique", "row_count_between", "mean_between"]
    """What to expect: ``not_null``, ``between`` (min/max, inclusive), ``in_set`` (values), ``unique``,
    ``row_count_between`` (min/max rows), ``mean_between`` (min/max of the column's mean)."""
    column: str | None = None
    """The column (every type but ``row_count_between``)."""
    min: float | None = None
    """Lower bound, inclusive (``between``, ``row_count_between``, ``mean_between``)."""
    max: float | None = None
    """Upper bound, inclusive (``between``, ``row_count_between``, ``mean_between``)."""
    values: list[str | int | float] | None = None
    """Allowed values (``in_set``)."""

    @model_validator(mode="after")
    def _arguments(self) -> ExpectationConfig:
        if self.type != "row_count_between" and not self.column:
            raise ValueError(f"expectation {self.type} needs a column")
        if self.type in ("between", "row_count_between", "mean_between") and self.min is None and self.max is None:
            raise ValueError(f"expectation {self.type} needs min, max or both")
        if self.type == "in_set" and not self.values:
            raise ValueError("expectation in_set needs values")
        return self

    @property
    def row_level(self) -> bool:
        return self.type in ("not_null", "between", "in_set")

    def describe(self) -> str:
        args = [f"column={self.column}"] if self.column else []
        args += [f"min={self.min:g}"] if self.min is not None else []
        args += [f"max={self.max:g}"] if self.max is not None else []
        args += [f"values={self.values}"] if self.values else []
        return f"{self.type}({', '.join(args)})"


class GateConfig(_Strict):
    """A data-quality gate: expectations and what to do when rows fail them."""

    expectations: list[ExpectationConfig] = []
    policy: Literal["fail", "quarantine"] = "fail"
    """``fail``: any failed expectation fails the run (nothing is written). ``quarantine``: rows failing row-level
    expectations go to the quarantine table and the rest is scored, as long as their fraction is at most
    ``max_bad_fraction``; table-level expectations still fail the run."""
    max_bad_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    """With ``quarantine``: the largest fraction of rows that may be quarantined; above it the run fails."""


class QualityConfig(_Strict):
    input: GateConfig = GateConfig()
    """Checked on the selected input rows before scoring."""
    output: GateConfig = GateConfig()
    """Checked on the scored rows before they are committed."""
    quarantine_table: str | None = None
    """Delta table for quarantined rows (reason, run id, the original row). Default: ``<output.table>_quarantine``."""


class ScheduleConfig(_Strict):
    """Present in a job config, it turns the job into an Airflow DAG (``dags/`` builds one per config)."""

    cron: str = "@daily"
    """Airflow schedule: a cron expression or a preset such as ``@daily``."""
    start_date: dt.date
    """First data interval."""
    end_date: dt.date | None = None
    """Last data interval (none: open-ended)."""
    catchup: bool = False
    """Whether Airflow schedules the intervals missed since ``start_date``."""
    partition_column: str = "ds"
    """Input (and output) column holding the data interval's date, ``YYYY-MM-DD``: each DAG run scores
    ``<partition_column> = '<data interval start>'``."""
    retries: int = Field(default=2, ge=0)
    """Retries of the scoring task."""
    retry_delay_s: float = Field(default=300.0, ge=0)
    """Delay before the first retry; doubled on each retry (exponential backoff)."""
    sensor_poke_interval_s: float = Field(default=60.0, gt=0)
    """How often the input sensor looks for the interval's partition."""
    sensor_timeout_s: float = Field(default=6 * 3600.0, gt=0)
    """How long the input sensor waits before the run fails."""
    deploy: Literal["local", "kubernetes"] = "local"
    """``local``: score with ``SparkSubmitOperator`` (connection ``spark_conn_id``); ``kubernetes``:
    ``SparkKubernetesOperator`` with the manifest the project renders."""
    spark_conn_id: str = "spark_default"
    """Airflow connection of the Spark master for ``deploy: local``."""
    kubernetes_conn_id: str = "kubernetes_default"
    """Airflow connection of the cluster for ``deploy: kubernetes``."""
    namespace: str = "default"
    """Kubernetes namespace for ``deploy: kubernetes``."""
    tags: list[str] = []
    """Extra DAG tags."""


class SparkConfig(_Strict):
    master: str | None = None
    """Spark master. Default: ``local[*]``, or whatever ``spark-submit`` was given."""
    conf: dict[str, str] = {}
    """Extra Spark settings, e.g. ``spark.driver.memory: 4g``."""


class JobConfig(_Strict):
    name: str = "job"
    """Job name, used in logs and in the commit metadata. Defaults to the config file's stem."""
    run_id: str | None = None
    """Run id to stamp. Default: a new one per run. Give the same id to make a retry of one run idempotent
    (a run id that already committed to the output table commits nothing again)."""
    input: InputConfig
    model: ModelConfig
    runtime: RuntimeConfig = RuntimeConfig()
    output: OutputConfig
    spark: SparkConfig = SparkConfig()
    quality: QualityConfig = QualityConfig()
    schedule: ScheduleConfig | None = None
    """When present, ``dags/`` builds an Airflow DAG for this job."""

    @property
    def quarantine_table(self) -> str:
        return self.quality.quarantine_table or f"{self.output.table.rstrip('/')}_quarantine"


_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m["name"] in os.environ:
                return os.environ[m["name"]]
            if m["default"] is not None:
                return m["default"]
            raise ConfigError(
                f"{where}: environment variable {m['name']} is not set",
                hint=f"export {m['name']}=..., or write ${{{m['name']}:-default}}",
            )

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, where) for v in value]
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; values are parsed as YAML."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE", hint="write e.g. --set input.table=/data/features")
        parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return parsed


def _apply(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set {dotted}: {'.'.join(parts[: i + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at `loc` (the parent of a bad key), for "did you mean" hints."""
    model: Any = JobConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)" if close else ""
        return f"{dotted}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"{dotted}: required key is missing"
    got = error.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{dotted}: {error['msg']}{shown}"


def build_job_config(raw: Mapping[str, Any], *, source: str = "<config>", overrides: Iterable[str] = ()) -> JobConfig:
    """Validate a config tree (e.g. parsed YAML) with ``key=value`` overrides applied; errors name `source`."""
    tree = _expand_env(dict(raw), source)
    for dotted, value in parse_overrides(overrides).items():
        _apply(tree, dotted, _expand_env(value, f"--set {dotted}"), f"--set {dotted}")
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as e:
        lines = "\n".join(f"  {_describe(err)}" for err in e.errors())
        raise ConfigError(
            f"{source}: invalid job config ({e.error_count()} problem{'s' * (e.error_count() > 1)}):\n{lines}",
            hint="fix the keys above in the file or in --set; `scoring run --help` lists the config keys",
        ) from None


def load_job_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> JobConfig:
    """Read a YAML job config, apply ``key=value`` overrides, and validate it strictly."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file", hint="pass the path of a YAML job config, e.g. conf/jobs/demo.yaml"
        ) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a job config is a YAML mapping, found {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return build_job_config(raw, source=str(path), overrides=overrides)
