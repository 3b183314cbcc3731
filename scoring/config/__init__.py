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
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import os
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from scoring.errors import ConfigError

MAX_BATCH_ROWS = 2**24
"""Most rows in one Arrow batch (``runtime.batch_rows``) or one Triton request (``runtime.triton.batch_rows``):
16,777,216. Arrow record batches and Spark's ``spark.sql.execution.arrow.maxRecordsPerBatch`` are indexed with 32-bit
ints, and a batch this long of 20 float features is already over 1 GiB per copy; anything larger is a typo."""

MAX_SECONDS = 366 * 86_400
"""Longest duration a job config accepts (``*_s``, ``*_us`` keys): a year. Longer is a typo, and Airflow's and
gRPC's time arithmetic overflows long before infinity."""

MAX_RETRIES = 1_000
"""Most retries a job config accepts (``runtime.triton.max_retries``, ``schedule.retries``)."""

MAX_THREADS = 1_024
"""Most threads, requests in flight or model instances a job config accepts: more than any machine has cores."""

MAX_DEPTH = 32
"""Deepest nesting a job config may have (a real one is about 6 levels deep: ``quality.input.expectations.0.values.0``)."""

MAX_ALIAS_VALUES = 100_000
"""Most values that YAML aliases (``*name``) may repeat in one document, in all; this refuses "billion laughs"
documents, whose few lines expand to billions of values."""

MAX_FILE_BYTES = 1 << 20
"""Largest job config file read: 1 MiB (a real one is a few KiB)."""

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def _show(value: Any, width: int = 60) -> str:
    """`value`'s repr, cut to `width` characters (and never failing, even on an int with 5,000 digits)."""
    try:
        text = repr(value)
    except ValueError:  # int too large for str(): sys.get_int_max_str_digits()
        text = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= width else f"{text[: width - 3]}..."


def _kind(value: Any) -> str:
    """``3`` -> ``an integer``, ``{}`` -> ``a mapping``: what a value is, in words."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "mapping", list: "list"}
    names |= {dt.date: "date", dt.datetime: "timestamp", bytes: "binary value", type(None): "null"}
    return _a(names.get(type(value), type(value).__name__))


def _a(word: str) -> str:
    return f"{'an' if word[:1] in tuple('aeiou') else 'a'} {word}"


_TAG_KINDS = {"int": "integer", "float": "number", "bool": "boolean", "timestamp": "date", "null": "null"}


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(
            f"expected a number, got {str(value).lower()} (YAML reads true/false/yes/no/on/off as booleans)"
        )
    return value


def _at_most(limit: int, why: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is not None and value > limit:
            raise ValueError(f"{_show(value)} is too large: at most {limit:,}; {why}")
        return value

    return AfterValidator(check)


_Int = Annotated[int, BeforeValidator(_number)]
_Float = Annotated[float, BeforeValidator(_number)]
_Seconds = Annotated[_Float, _at_most(MAX_SECONDS, "a duration longer than a year (31,622,400 s) is a typo")]
_Micros = Annotated[_Int, _at_most(MAX_SECONDS * 1_000_000, "a duration longer than a year is a typo")]
_BatchRows = Annotated[
    _Int,
    Field(ge=1),
    _at_most(
        MAX_BATCH_ROWS,
        "Arrow batches are indexed with 32-bit ints and 2**24 rows of 20 float features is already over 1 GiB",
    ),
]
_Threads = Annotated[_Int, Field(ge=1), _at_most(MAX_THREADS, "more than any machine has cores")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class TensorInputConfig(_Strict):
    """How one array column (embeddings, token ids, a mask) feeds the model; see the README's "Tensor and
    multi-input models"."""

    input: str | None = None
    """The model input this column feeds (default: the input of the column's own name)."""
    length: Annotated[_Int, Field(ge=1), _at_most(_INT32_MAX, "longer than any tensor dimension")] | None = None
    """Pad (with `pad`) or truncate every row's array to this many elements. Absent: every row must have the same
    length, and a batch with rows of different lengths (ragged) fails the run naming the column and the row."""
    pad: float = 0
    """The value shorter arrays are padded with (cast to the input's dtype, e.g. 0 for ids and masks)."""


class InputConfig(_Strict):
    table: str | None = None
    """Path (or URI) of the input Delta table, or its name in Spark's catalog (``db.table``; see
    :mod:`scoring.adapters.catalog`). Required, except for a stream that reads Kafka (``stream.source: kafka``), whose
    rows come from a topic."""
    key: list[str] = Field(min_length=1)
    """Key column(s) that identify a row; copied to the output. A string or a list."""
    features: list[str] | None = None
    """Feature columns, in the order the model takes them. When omitted, taken from the model's MLflow signature."""
    where: str | None = None
    """Optional Spark SQL filter on the input, e.g. ``ds = '2026-11-24'``. Absent or null: every row. An empty or
    blank string is refused (it would mean "every row" by accident); write ``true`` to say so explicitly, e.g.
    ``where: ${FILTER:-true}``."""
    version: Annotated[_Int, _at_most(_INT64_MAX, "Delta versions are 64-bit")] | None = Field(default=None, ge=0)
    """Delta version to read. By default the latest version at the start of the run, which is then recorded."""
    on_invalid_rows: Literal["fail", "skip"] = "fail"
    """Rows with a null or NaN feature: ``fail`` the run (nothing is written), or ``skip`` them (they are counted as
    rejected in the summary, and the rest is scored)."""
    tensors: dict[str, TensorInputConfig] = {}
    """Array feature columns, by column name, that feed a model input of another name or are padded to a fixed
    length, e.g. ``{ids: {input: input_ids, length: 128}}``. An array column not listed feeds the input of its own
    name, and must not be ragged."""

    _listify = field_validator("key", "features", mode="before")(_as_list)

    @field_validator("where")
    @classmethod
    def _a_real_filter(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                f"{value!r} is an empty filter; leave input.where out (or --set input.where=null) to score every "
                "row, write a filter such as ds = '2026-11-24', or write true to mean every row explicitly"
            )
        return value


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
                f"{_show(value)} is not a registry model URI; use models:/<name>@<alias> or models:/<name>/<version>"
            )
        return value


class EmbeddedConfig(_Strict):
    threads: _Threads = 1
    """Threads per model session in each Python worker (onnxruntime ``intra_op_num_threads``), 1 to 1,024. One is
    fastest when Spark already runs one worker per core."""


class TritonModelConfig(_Strict):
    """What goes into the exported model's ``config.pbtxt`` (Triton's model configuration)."""

    max_batch_size: Annotated[_Int, Field(ge=1), _at_most(_INT32_MAX, "config.pbtxt holds a 32-bit int")] = 65_536
    """Largest batch the server hands the model at once (requests are merged up to this many rows); at most
    2,147,483,647 (a 32-bit int in ``config.pbtxt``)."""
    preferred_batch_sizes: list[Annotated[_Int, Field(ge=1)]] = []
    """Batch sizes the dynamic batcher aims for, each at most ``max_batch_size`` (Triton refuses larger ones); empty
    lets it merge up to ``max_batch_size``."""
    max_queue_delay_us: Annotated[_Micros, Field(ge=0)] = 500
    """How long the dynamic batcher waits for more requests to merge, in microseconds (at most a year)."""
    max_queue_size: Annotated[_Int, Field(ge=0), _at_most(_INT32_MAX, "config.pbtxt holds a 32-bit int")] = 0
    """Requests the server queues per model before it rejects new ones as overloaded (0: unbounded)."""
    queue_timeout_us: Annotated[_Micros, Field(ge=0)] = 0
    """A queued request older than this is rejected (0: never; at most a year)."""
    instance_count: _Threads = 1
    """Model instances the server runs (concurrent executions), 1 to 1,024."""
    instance_kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] = "KIND_CPU"
    """Where instances run: ``KIND_GPU`` on a GPU node."""

    @model_validator(mode="after")
    def _preferred_fit(self) -> TritonModelConfig:
        too_big = [size for size in self.preferred_batch_sizes if size > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}; Triton refuses such "
                "a model config: lower them or raise max_batch_size"
            )
        return self


class TritonConfig(_Strict):
    url: str | None = None
    """Server address, ``host:port``. Default: ``127.0.0.1:8001`` for gRPC, ``127.0.0.1:8000`` for HTTP
    (a co-located sidecar shares the worker's loopback)."""
    protocol: Literal["grpc", "http"] = "grpc"
    """Transport. gRPC is thread-safe and keeps several requests in flight on one connection."""
    shared_memory: Literal["none", "system"] = "none"
    """``system``: tensors travel through a POSIX shared-memory region (``/dev/shm``) registered once per worker
    instead of over the socket; the server must run on the same host (a sidecar does)."""
    timeout_s: Annotated[_Seconds, Field(gt=0)] = 30.0
    """Deadline of each request, in seconds, and the longest wait for the server to be ready; finite, at most a
    year."""
    max_retries: Annotated[_Int, Field(ge=0), _at_most(MAX_RETRIES, "the backoff between retries overflows")] = 3
    """Retries of a request that failed transiently (unavailable, deadline exceeded, overloaded), with exponential
    backoff and jitter, 0 to 1,000. Permanent failures (unknown model, bad shape) fail at once."""
    batch_rows: _BatchRows = 10_000
    """Rows per request; an Arrow batch larger than this is split. At most 16,777,216 (2**24, see
    ``runtime.batch_rows``)."""
    max_inflight: _Threads = 2
    """Requests in flight per Python worker, so the server's dynamic batcher has work to merge; 1 to 1,024."""
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
    batch_rows: _BatchRows = 10_000
    """Rows per Arrow batch sent to the model (Spark's ``spark.sql.execution.arrow.maxRecordsPerBatch``). At most
    16,777,216 (2**24): Arrow record batches and Spark's ``maxRecordsPerBatch`` are indexed with 32-bit ints, and a
    batch that long of 20 float features is already over 1 GiB."""
    embedded: EmbeddedConfig = EmbeddedConfig()
    triton: TritonConfig = TritonConfig()


class OutputConfig(_Strict):
    table: str
    """Path (or URI) of the output Delta table, or its name in Spark's catalog (registered on the first run). Created
    on the first run."""
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
    min: _Float | None = None
    """Lower bound, inclusive (``between``, ``row_count_between``, ``mean_between``). A finite number, at most
    ``max``; leave it out for no lower bound."""
    max: _Float | None = None
    """Upper bound, inclusive (``between``, ``row_count_between``, ``mean_between``). A finite number, at least
    ``min``; leave it out for no upper bound."""
    values: list[str | int | float] | None = None
    """Allowed values (``in_set``): strings or finite numbers."""

    @field_validator("values", mode="before")
    @classmethod
    def _plain_values(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, float) and not math.isfinite(item):
                    raise ValueError(f"item {i} is {item}: allowed values are strings or finite numbers")
                if not isinstance(item, (str, int, float)):
                    raise ValueError(
                        f"item {i} is {_kind(item)} ({_show(item)}): allowed values are strings or finite numbers"
                    )
        return value

    @model_validator(mode="after")
    def _arguments(self) -> ExpectationConfig:
        if self.type != "row_count_between" and not self.column:
            raise ValueError(f"expectation {self.type} needs a column")
        if self.type in ("between", "row_count_between", "mean_between") and self.min is None and self.max is None:
            raise ValueError(f"expectation {self.type} needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"expectation {self.type} has min {self.min:g} above max {self.max:g}: swap them")
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
    max_bad_fraction: _Float = Field(default=0.0, ge=0.0, le=1.0)
    """With ``quarantine``: the largest fraction of rows that may be quarantined (0 to 1); above it the run fails."""


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
    retries: Annotated[_Int, Field(ge=0), _at_most(MAX_RETRIES, "more retries than that is a typo")] = 2
    """Retries of the scoring task, 0 to 1,000."""
    retry_delay_s: Annotated[_Seconds, Field(ge=0)] = 300.0
    """Delay before the first retry; doubled on each retry (exponential backoff). Finite, at most a year."""
    sensor_poke_interval_s: Annotated[_Seconds, Field(gt=0)] = 60.0
    """How often the input sensor looks for the interval's partition. Finite, at most a year."""
    sensor_timeout_s: Annotated[_Seconds, Field(gt=0)] = 6 * 3600.0
    """How long the input sensor waits before the run fails. Finite, at most a year."""
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


def _spark_text(value: Any) -> Any:
    """A YAML scalar as Spark spells it: ``true`` -> ``"true"``, ``8`` -> ``"8"``, ``0.6`` -> ``"0.6"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else value  # a huge int stays an int, and is refused
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value


class SparkConfig(_Strict):
    master: str | None = None
    """Spark master. Default: ``local[*]``, or whatever ``spark-submit`` was given."""
    conf: dict[str, str] = {}
    """Extra Spark settings, e.g. ``spark.driver.memory: 4g``. Numbers and booleans are passed as Spark spells them
    (``8`` as ``"8"``, ``true`` as ``"true"``); other values must be strings."""

    @field_validator("conf", mode="before")
    @classmethod
    def _spark_spelling(cls, value: Any) -> Any:
        return {k: _spark_text(v) for k, v in value.items()} if isinstance(value, dict) else value


_FIELD_TYPES = Literal["string", "long", "int", "double", "boolean", "date", "timestamp"]


class KafkaSourceConfig(_Strict):
    bootstrap_servers: str
    """Kafka brokers, ``host:port[,host:port...]``."""
    topic: str
    """Topic to read. Each record's value is a JSON object with the key, feature and partition fields by name."""
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    """Where a new query starts; a restarted query resumes from its checkpoint instead."""
    fields: dict[str, _FIELD_TYPES] = {}
    """Spark types of the non-feature fields read from the JSON value (key, partition, event time), e.g.
    ``{customer_id: long}``. Default: ``string``. Features are always read as ``double``."""
    options: dict[str, str] = {}
    """Extra options for Spark's Kafka source, passed as given, e.g. ``kafka.security.protocol: SSL`` or
    ``failOnDataLoss: false``."""

    @field_validator("options", mode="before")
    @classmethod
    def _spark_spelling(cls, value: Any) -> Any:
        return {k: _spark_text(v) for k, v in value.items()} if isinstance(value, dict) else value


class KafkaSinkConfig(_Strict):
    bootstrap_servers: str | None = None
    """Kafka brokers for the output topic. Default: ``stream.kafka.bootstrap_servers``."""
    topic: str
    """Topic the scores go to: one JSON record per scored row (key, partition, predictions, lineage, source),
    keyed by the input key."""


class StreamConfig(_Strict):
    source: Literal["delta", "kafka"] = "delta"
    """Where rows come from: ``delta`` (the append-only Delta table ``input.table``, read as a stream) or ``kafka``
    (``stream.kafka``)."""
    checkpoint: str
    """Checkpoint folder of the query (Spark's offsets and commits). One per query: a restart with the same folder
    resumes exactly where the query stopped."""
    trigger: Literal["micro-batch", "available-now", "real-time"] = "micro-batch"
    """``micro-batch``: a micro-batch every ``interval_s`` (0: as soon as the previous one ends); ``available-now``:
    what is there now, then stop (as ``--available-now``); ``real-time``: refused at start: Spark's Real-time Mode
    holds our Python scoring UDF's results until each real-time batch ends (see the README's Streaming section)."""
    interval_s: Annotated[_Seconds, Field(ge=0)] = 0.0
    """Seconds between micro-batch starts (``trigger: micro-batch``)."""
    max_files_per_trigger: (
        Annotated[_Int, Field(ge=1), _at_most(_INT32_MAX, "Spark reads it as a 32-bit int")] | None
    ) = None
    """Delta source: most new files per micro-batch (Spark's default: 1,000)."""
    max_offsets_per_trigger: Annotated[_Int, Field(ge=1), _at_most(_INT64_MAX, "Kafka offsets are 64-bit")] | None = (
        None
    )
    """Kafka source: most records per micro-batch, over all partitions (default: no limit)."""
    event_time: str | None = None
    """Delta source: a timestamp column holding each row's event time; lag is measured from it. Default: the commit
    time of the source version that added the row. (Kafka: the record's timestamp.)"""
    sinks: list[Literal["delta", "kafka"]] = Field(default=["delta"], min_length=1)
    """Where scores go: ``delta`` (``output.table``, exactly once), ``kafka`` (``stream.kafka_sink``, at least once),
    or both."""
    kafka: KafkaSourceConfig | None = None
    """The Kafka source (``source: kafka``)."""
    kafka_sink: KafkaSinkConfig | None = None
    """The Kafka sink (``kafka`` in ``sinks``)."""
    follow_alias: bool = False
    """Re-resolve ``model.uri`` (an alias) between micro-batches and score with the version it points to from the
    next micro-batch on. Default: the version resolved at start is pinned for the life of the query."""
    alias_check_interval_s: Annotated[_Seconds, Field(ge=0)] = 30.0
    """With ``follow_alias``: at most one registry lookup per this many seconds."""
    metrics_port: Annotated[_Int, Field(ge=0, le=65_535)] | None = None
    """Serve Prometheus metrics on ``127.0.0.1:<port>`` while the query runs (0: any free port). Default: none."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint listens on."""

    _listify = field_validator("sinks", mode="before")(_as_list)

    @model_validator(mode="after")
    def _complete(self) -> StreamConfig:
        if self.source == "kafka" and self.kafka is None:
            raise ValueError(
                "source: kafka needs a stream.kafka section (bootstrap_servers, topic); or use source: delta"
            )
        if "kafka" in self.sinks and self.kafka_sink is None:
            raise ValueError("sinks lists kafka: add a stream.kafka_sink section (topic, and bootstrap_servers)")
        if self.kafka_sink is not None and self.kafka_sink.bootstrap_servers is None and self.kafka is None:
            raise ValueError("stream.kafka_sink.bootstrap_servers is needed when the source is not Kafka")
        if len(set(self.sinks)) != len(self.sinks):
            raise ValueError(f"sinks lists a sink twice: {self.sinks}")
        if self.trigger == "real-time" and (self.source != "kafka" or self.sinks != ["kafka"]):
            raise ValueError(
                "trigger: real-time runs Kafka to Kafka only (Spark's Real-time Mode has no Delta source or sink, "
                "and no foreachBatch): set source: kafka and sinks: [kafka], or use trigger: micro-batch"
            )
        if self.event_time is not None and self.source == "kafka":
            raise ValueError("event_time is for a Delta source; a Kafka record's own timestamp is its event time")
        return self

    @property
    def sink_servers(self) -> str | None:
        if self.kafka_sink is None:
            return None
        return self.kafka_sink.bootstrap_servers or (self.kafka.bootstrap_servers if self.kafka else None)


class RedisIndexConfig(_Strict):
    url: str = "redis://127.0.0.1:6379/0"
    """The Redis server ``scoring publish-online`` loads and ``scoring serve`` reads (``redis://host:port/db``)."""
    prefix: str | None = None
    """Key prefix of this job's scores. Default: ``scoring:<job name>``."""
    batch_keys: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more keys per pipeline than that is a typo")] = 10_000
    """Keys written per pipeline round trip by ``scoring publish-online``."""


class ServeConfig(_Strict):
    host: str = "127.0.0.1"
    """Address ``scoring serve`` listens on (``--host`` overrides it)."""
    port: Annotated[_Int, Field(ge=0, le=65_535)] = 8080
    """Port ``scoring serve`` listens on (0: any free port; ``--port`` overrides it)."""
    table: str | None = None
    """The Delta table of precomputed scores. Default: ``output.table`` (the batch job's output)."""
    partition: dict[str, str] = {}
    """Serve only the rows of this partition (e.g. ``{ds: 2026-11-01}``). Default: when the table holds several rows
    for a key (one per partition), the most recently scored one answers."""
    index: Literal["memory", "redis"] = "memory"
    """Where precomputed scores are looked up: ``memory`` (the table loaded into this process with delta-rs, rebuilt
    in the background when the table gets a new version) or ``redis`` (what ``scoring publish-online`` loaded)."""
    redis: RedisIndexConfig = RedisIndexConfig()
    """The Redis index (``index: redis``)."""
    refresh_interval_s: Annotated[_Seconds, Field(gt=0)] = 5.0
    """How often the table's version (or the Redis index's published version) is checked for a new one."""
    alias_check_interval_s: Annotated[_Seconds, Field(gt=0)] = 30.0
    """How often ``model.uri`` is re-resolved; a precomputed score by another version than the current one is
    stale."""
    max_age_s: Annotated[_Seconds, Field(gt=0)] | None = None
    """A precomputed score older than this (by its ``scored_at``) is stale. Default: no limit."""
    serve_stale: bool = False
    """When a key's precomputed score is stale and live inference is unavailable, answer with it marked
    ``stale: true`` instead of 503."""
    live: bool = True
    """Score keys without a current precomputed score live, with the request's features. ``false``: such a key is
    404 (or its stale score, with ``serve_stale``)."""
    live_fallback: Literal["none", "embedded"] = "none"
    """With ``runtime.backend: triton``: answer live requests in process while Triton is down (the response says
    ``backend: embedded``)."""
    batch_window_ms: Annotated[_Float, Field(ge=0, le=1000)] = 2.0
    """Live requests arriving within this window go to the backend as one batch."""
    max_batch_rows: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more rows than that is a typo")] = 512
    """Most rows per live backend call."""
    deadline_s: Annotated[_Seconds, Field(gt=0)] = 1.0
    """Longest wait for a live backend call; past it the request gets 503 with ``Retry-After``."""
    breaker_failures: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more than that is a typo")] = 5
    """Consecutive live backend failures that open the circuit breaker (live requests then get 503 at once)."""
    breaker_reset_s: Annotated[_Seconds, Field(gt=0)] = 5.0
    """Seconds between probes of the backend while the breaker is open; the first probe that succeeds closes it."""
    max_body_bytes: Annotated[_Int, Field(ge=1), _at_most(_INT32_MAX, "more than 2 GiB per request is a typo")] = (
        1_048_576
    )
    """Largest request body accepted (413 above it)."""
    max_batch_keys: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more keys than that is a typo")] = 1_000
    """Most keys in one ``POST /v1/score`` list (413 above it)."""
    request_receive_timeout_s: Annotated[_Seconds, Field(gt=0)] = 10.0
    """Longest time a connection may take to send one whole request (headers and body), from its first byte (or
    from connecting); past it the server answers 408 and closes the connection. Bounds slow clients: a client that
    sends a byte at a time cannot hold a connection longer than this."""
    max_connections: Annotated[_Int, Field(ge=1), _at_most(1_000_000, "more connections than that is a typo")] = 4096
    """Most connections held open at once. A connection beyond it sheds another: the oldest one still sending its
    request first, then the oldest idle keep-alive one; only when every connection has a request being answered is
    the new one refused (503). So slow clients are dropped, not healthy ones."""
    auth_token_env: str | None = None
    """Name of an environment variable holding a bearer token; when set, every route but ``/v2/health/*`` needs
    ``Authorization: Bearer <token>``. The token itself never goes in a config file."""


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MiB = Annotated[_Int, Field(ge=1), _at_most(4 * 1024 * 1024, "more than 4 TiB is a typo")]


def _k8s_check(rule: str, what: str) -> Any:
    """A before-validator holding a name (or a list of names) to one of the API server's rules
    (:mod:`scoring.deploy.k8s_names`)."""

    def check(value: Any) -> Any:
        from scoring.deploy import k8s_names

        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        for name in names:
            problems = k8s_names.RULES[rule](name) if isinstance(name, str) else []
            if problems:
                raise ValueError(f"{_show(name)} is not {what}: it {'; it '.join(problems)}")
        return value

    return check


_k8s_names = _k8s_check("dns1123_subdomain", "a Kubernetes object name (a DNS-1123 subdomain)")
_k8s_namespace = _k8s_check("dns1123_label", "a Kubernetes namespace (a DNS-1123 label, at most 63 characters)")
_k8s_key = _k8s_check("config_map_key", "a key of a Kubernetes Secret")


def _env_names(value: Any) -> Any:
    for name in value if isinstance(value, dict) else ():
        if isinstance(name, str) and not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{_show(name)} is not an environment variable name (letters, digits and _)")
    return value


class KubernetesSecretKeyConfig(_Strict):
    """One key of a Kubernetes Secret, referenced (``secretKeyRef``): its value never appears in a manifest."""

    secret: str
    """Name of the Secret, in the job's namespace."""
    key: str
    """Key in the Secret."""

    _names = field_validator("secret", mode="before")(_k8s_names)
    _keys = field_validator("key", mode="before")(_k8s_key)


class KubernetesTolerationConfig(_Strict):
    """A toleration of the pods, e.g. for a tainted GPU node pool (``{key: nvidia.com/gpu, operator: Exists}``)."""

    key: str | None = None
    """Taint key; empty with ``operator: Exists`` tolerates every taint."""
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    """Taint value (``operator: Equal`` only)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; empty: every effect."""
    toleration_s: Annotated[_Int, Field(ge=0), _at_most(MAX_SECONDS, "longer than a year is a typo")] | None = None
    """With ``effect: NoExecute``: how long a pod stays on a node after the taint appears, in seconds."""

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesTolerationConfig:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")
        if self.operator == "Equal" and not self.key:
            raise ValueError("a toleration with operator Equal needs a key (or use operator: Exists)")
        if self.toleration_s is not None and self.effect != "NoExecute":
            raise ValueError("toleration_s applies to effect NoExecute only")
        return self


class KubernetesPodConfig(_Strict):
    """Size and placement of a Spark pod (the driver, or each executor)."""

    cores: _Threads = 1
    """Spark cores of the pod (``spark.driver.cores`` / ``spark.executor.cores``), its CPU request; 1 to 1,024."""
    memory_mib: _MiB = 2048
    """JVM heap of the pod in MiB (``spark.driver.memory`` / ``spark.executor.memory``). Spark adds the overhead
    (``memory_overhead_mib``) to get the container's memory request and limit."""
    memory_overhead_mib: _MiB | None = None
    """Memory beyond the heap in MiB: Python workers, Arrow buffers, off-heap. Default: Spark's (10 %, 40 % for
    Python jobs under spark-operator, at least 384 MiB). Python workers holding an in-process model need more."""
    node_selector: dict[str, str] = {}
    """Node labels the pod must run on, e.g. ``{nvidia.com/gpu.present: "true"}`` for a GPU pool."""
    tolerations: list[KubernetesTolerationConfig] = []
    """Taints the pod tolerates, e.g. the GPU pool's."""
    priority_class: str | None = None
    """``priorityClassName`` of the pod (a PriorityClass the cluster defines)."""

    _names = field_validator("priority_class", mode="before")(_k8s_names)


class KubernetesDriverConfig(KubernetesPodConfig):
    """The driver pod. With ``runtime.backend: triton`` it runs the Triton sidecar too (the run checks the model's
    outputs on a few rows on the driver before scoring), so give it the executors' GPU node selector and tolerations
    when the sidecar has a GPU."""


class KubernetesDynamicAllocationConfig(_Strict):
    """Executors added and removed by Spark with the work queued (``spec.dynamicAllocation``, shuffle tracking on).
    Each new executor pod starts its own sidecar: it exports the model and loads it before it scores."""

    min_executors: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")] = 1
    """Fewest executors (at least 1: Airflow's SparkKubernetesOperator refuses a minimum of 0)."""
    max_executors: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")]
    """Most executors, hence most sidecars (and GPUs) one run holds."""
    initial_executors: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")] | None = (
        None
    )
    """Executors requested at start (default: ``min_executors``)."""

    @model_validator(mode="after")
    def _ordered(self) -> KubernetesDynamicAllocationConfig:
        initial = self.initial_executors if self.initial_executors is not None else self.min_executors
        if not self.min_executors <= initial <= self.max_executors:
            raise ValueError(
                f"executors must satisfy min_executors <= initial_executors <= max_executors, got "
                f"{self.min_executors} <= {initial} <= {self.max_executors}"
            )
        return self


class KubernetesExecutorConfig(KubernetesPodConfig):
    """The executor pods: how many, and each one's size and placement."""

    instances: Annotated[_Int, Field(ge=1), _at_most(100_000, "more executors than that is a typo")] = 2
    """Executors of a run (``spec.executor.instances``); leave it out with ``dynamic_allocation``."""
    dynamic_allocation: KubernetesDynamicAllocationConfig | None = None
    """Bounds for a varying number of executors, instead of ``instances``."""

    @model_validator(mode="after")
    def _one_sizing(self) -> KubernetesExecutorConfig:
        if self.dynamic_allocation is not None and "instances" in self.model_fields_set:
            raise ValueError("give instances or dynamic_allocation, not both")
        return self


class KubernetesSidecarConfig(_Strict):
    """The Triton Inference Server beside each executor (and the driver), with ``runtime.backend: triton``: a native
    sidecar (Kubernetes 1.29+) on the pod's loopback, serving the run's pinned model version."""

    image: str = "nvcr.io/nvidia/tritonserver:26.06-py3"
    """NVIDIA's Triton image, pinned by tag (``:<yy.mm>-py3``) or digest (``@sha256:...``); ``latest`` is refused."""
    gpus: Annotated[_Int, Field(ge=0), _at_most(64, "more GPUs than a node has")] = 0
    """GPUs the sidecar requests (``nvidia.com/gpu``); 0: a CPU sidecar. ``runtime.triton.model.instance_kind:
    KIND_GPU`` needs at least 1."""
    cpu_millicores: Annotated[_Int, Field(ge=1), _at_most(1_024_000, "more cores than a node has")] = 2000
    """CPU the sidecar requests, in millicores (1000 = one core)."""
    memory_mib: _MiB = 4096
    """Memory the sidecar requests and is limited to, in MiB (the model's weights and the server's buffers)."""
    shm_size_mib: _MiB = 1024
    """Size limit of the pod's in-memory ``/dev/shm`` (shared by the executor and the sidecar, for
    ``runtime.triton.shared_memory: system``), in MiB; it counts against the pod's memory."""
    startup_timeout_s: Annotated[_Seconds, Field(gt=0)] = 600.0
    """How long the sidecar may take to become ready (``/v2/health/ready``) before the pod is failed."""
    extra_args: list[str] = []
    """Further ``tritonserver`` flags, e.g. ``[--log-verbose=1]``."""

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        tag = value.rpartition("/")[2].partition(":")[2]
        if "@sha256:" not in value and (not tag or tag == "latest"):
            raise ValueError(
                f"{_show(value)} is not pinned: give a tag such as nvcr.io/nvidia/tritonserver:26.06-py3 (or a digest)"
            )
        return value

    @field_validator("extra_args")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        for arg in value:
            if not arg.startswith("--"):
                raise ValueError(f"{_show(arg)} is not a tritonserver flag (--name=value)")
        return value


class KubernetesConfig(_Strict):
    """What ``scoring render k8s`` (and the DAG's ``deploy: kubernetes``) put in the manifests beyond the job itself:
    the image, sizes, placement and where credentials come from (Secrets, by reference)."""

    image: str | None = None
    """Driver and executor image (``sidecars/k8s/Dockerfile``). Default: ``$SCORING_IMAGE``, else a placeholder."""
    namespace: str | None = None
    """Namespace of the manifests. Default: ``schedule.namespace``, else ``default``."""
    service_account: str = "spark"
    """Service account of the driver (it creates the executor pods)."""
    image_pull_secrets: list[str] = []
    """Secrets holding the registry credentials for the images."""
    env: dict[str, str] = {}
    """Plain environment variables of the driver, the executors and the model export, e.g. ``MLFLOW_TRACKING_URI``.
    Never credentials: use ``secret_env`` or ``env_from_secrets``."""
    secret_env: dict[str, KubernetesSecretKeyConfig] = {}
    """Environment variables read from Secrets (``secretKeyRef``), e.g. ``{MLFLOW_TRACKING_TOKEN: {secret: mlflow,
    key: token}}``."""
    env_from_secrets: list[str] = []
    """Secrets whose every key becomes an environment variable (``envFrom``), e.g. the object store's
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""
    driver: KubernetesDriverConfig = KubernetesDriverConfig()
    executor: KubernetesExecutorConfig = KubernetesExecutorConfig()
    sidecar: KubernetesSidecarConfig = KubernetesSidecarConfig()

    _names = field_validator("image_pull_secrets", "env_from_secrets", mode="before")(_k8s_names)
    _namespace = field_validator("namespace", mode="before")(_k8s_namespace)
    _env = field_validator("env", "secret_env", mode="before")(_env_names)

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, value: Any) -> Any:
        return {k: _spark_text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_source_per_variable(self) -> KubernetesConfig:
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"{', '.join(both)} given in both env and secret_env: keep one")
        return self


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
    stream: StreamConfig | None = None
    """When present, ``scoring stream`` runs this job as a streaming query (see the README's Streaming section)."""
    serve: ServeConfig | None = None
    """``scoring serve`` settings (see the README's Online serving section). Default: the defaults of each key."""
    kubernetes: KubernetesConfig | None = None
    """``scoring render k8s`` and ``schedule.deploy: kubernetes`` settings (see docs/kubernetes.md). Default: the
    defaults of each key."""

    @model_validator(mode="wrap")
    @classmethod
    def _has_a_source(cls, data: Any, handler: Any) -> JobConfig:
        """``input.table`` is required except for a stream that reads Kafka: reported as a missing key, beside any
        other problem of the document (so a typo such as ``tabel`` shows both the unknown key and the missing one)."""
        stream = data.get("stream") if isinstance(data, dict) else None
        reads_kafka = isinstance(stream, dict) and stream.get("source") == "kafka"
        given = data.get("input") if isinstance(data, dict) else None
        missing = isinstance(given, dict) and given.get("table") is None and not reads_kafka
        if not missing:
            return handler(data)
        problem = {"type": "missing", "loc": ("input", "table"), "input": given}
        try:
            handler(data)
        except ValidationError as e:
            errors = [
                {"type": err["type"], "loc": err["loc"], "input": err.get("input"), "ctx": err.get("ctx", {})}
                if err.get("ctx")
                else {"type": err["type"], "loc": err["loc"], "input": err.get("input")}
                for err in e.errors()
            ]
            raise ValidationError.from_exception_data(e.title, [*errors, problem]) from None
        raise ValidationError.from_exception_data(cls.__name__, [problem])

    @property
    def quarantine_table(self) -> str:
        return self.quality.quarantine_table or f"{self.output.table.rstrip('/')}_quarantine"


# -- where a problem is -------------------------------------------------------------------------------------------

_Path = tuple[Any, ...]
_SET = "--set"


def _dotted(path: Iterable[Any]) -> str:
    """``("input", "key", 0)`` -> ``input.key.0``; a part that is not a plain name is quoted (``spark.conf.'a.b'``)."""
    parts = []
    for part in path:
        plain = isinstance(part, int) or (isinstance(part, str) and part and "." not in part and part == part.strip())
        parts.append(str(part) if plain else _show(part, 40))
    return ".".join(parts) or "(top level)"


def _located(source: str, path: _Path = (), line: int | None = None) -> str:
    """``conf/x.yaml, line 3: input.table`` or ``--set input.table``."""
    if source == _SET:
        return f"{_SET} {_dotted(path)}"
    where = f"{source}, line {line}" if line else source
    return f"{where}: {_dotted(path)}" if path else where


# -- reading YAML -------------------------------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str", "seq", "map", "timestamp"))
_MERGE, _VALUE, _STR = _TAG + "merge", _TAG + "value", _TAG + "str"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, minus its silent surprises: a duplicate key, a non-text key, an exotic tag, deep nesting,
    and alias bombs are refused with the dotted key (and, in a file, the line) instead of being read."""

    def __init__(self, text: str, source: str, prefix: _Path) -> None:
        super().__init__(text)
        self.name = source  # what PyYAML's own messages call the stream
        self._source = source
        self._prefix = prefix
        self._depth = 0
        self._paths: dict[int, _Path] = {}
        self._checked: set[int] = set()
        self.lines: dict[_Path, int] = {}
        """Line of each key (and list item) by its dotted path, for messages about the validated tree."""

    def _where(self, node: Node, path: _Path | None = None) -> str:
        path = self._paths.get(id(node), self._prefix) if path is None else path
        return _located(self._source, path, None if self._source == _SET else node.start_mark.line + 1)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                line = None if self._source == _SET else mark.line + 1
                raise ConfigError(
                    f"{_located(self._source, self._prefix, line)}: nested more than {MAX_DEPTH} levels deep",
                    hint="a job config is a few levels deep; look for a stray bracket or indentation",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def survey(self, root: Node) -> None:
        """Check the composed document before building any Python value from it (see the class docstring)."""
        sizes: dict[int, int] = {}
        heights: dict[int, int] = {}
        open_: set[int] = set()

        def visit(node: Node, path: _Path, depth: int) -> int:
            ident = id(node)
            if ident in open_:
                raise ConfigError(
                    f"{self._where(node, path)}: an alias refers to a mapping or list that contains it",
                    hint="a job config is a tree: remove the recursive alias",
                )
            if ident in sizes:  # an alias to a node seen before: count what it repeats
                if depth + heights[ident] - 1 > MAX_DEPTH:
                    raise ConfigError(
                        f"{self._where(node, path)}: aliases nest this document more than {MAX_DEPTH} levels deep",
                        hint="a job config is a few levels deep; write the values out instead of aliasing them",
                    )
                return sizes[ident]
            self._paths[ident] = path
            if node.tag not in _PLAIN_TAGS and node.tag not in (_MERGE, _VALUE):
                tag = node.tag.replace(_TAG, "!!")
                raise ConfigError(
                    f"{self._where(node)}: the tag {_show(tag)} is not allowed in a job config",
                    hint="write plain YAML values; to make a value text, quote it ('...') rather than tag it",
                )
            children: list[tuple[Node, _Path]] = []
            if isinstance(node, SequenceNode):
                for i, child in enumerate(node.value):
                    children.append((child, (*path, i)))
                    self.lines.setdefault((*path, i), child.start_mark.line + 1)
            elif isinstance(node, MappingNode):
                for key_node, value_node in node.value:
                    if not isinstance(key_node, ScalarNode):
                        kind = "mapping" if isinstance(key_node, MappingNode) else "list"
                        raise ConfigError(
                            f"{self._where(key_node, path)}: a key is a {kind}; keys are names",
                            hint="write the key as plain text (a complex key, ? or [..]:, has no meaning here)",
                        )
                    if key_node.tag == _MERGE:
                        children.append((value_node, path))
                        continue
                    if key_node.tag not in (_STR, _VALUE):
                        kind = key_node.tag.replace(_TAG, "")
                        raise ConfigError(
                            f"{self._where(key_node, path)}: the key {_show(key_node.value)} is read by YAML as "
                            f"{_a(_TAG_KINDS.get(kind, kind))}, not a name",
                            hint=f"keys are names: quote it ('{key_node.value}') if it is one",
                        )
                    children.append((value_node, (*path, key_node.value)))
                    self.lines.setdefault((*path, key_node.value), key_node.start_mark.line + 1)
            open_.add(ident)
            size, height = 1, 1
            for child, child_path in children:
                size += visit(child, child_path, depth + 1)
                height = max(height, 1 + heights[id(child)])
            open_.discard(ident)
            sizes[ident], heights[ident] = size, height
            return size

        total = visit(root, self._prefix, 1)
        repeated = total - len(sizes)
        if repeated > MAX_ALIAS_VALUES:
            raise ConfigError(
                f"{_located(self._source, self._prefix)}: aliases (*name) repeat {repeated:,} values, more than "
                f"{MAX_ALIAS_VALUES:,}",
                hint="a job config is small: write the values out, or alias fewer of them",
            )

    def _check_keys(self, node: MappingNode) -> None:
        """Refuse a key given twice in `node`, before merge keys (``<<``) fold other mappings into it."""
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                path = (*self._paths.get(id(node), self._prefix), key_node.value)
                first = seen[key_node.value]
                lines = f", on lines {first} and {line}" if line != first else f" on line {line}"
                lines = "" if self._source == _SET else lines
                raise ConfigError(
                    f"{_located(self._source, path)}: given twice{lines}",
                    hint="keep one of them (YAML alone would silently keep the last)",
                )
            seen[key_node.value] = line

    def flatten_mapping(self, node: MappingNode) -> None:
        self._check_keys(node)
        super().flatten_mapping(node)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._check_keys(node)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # 2026-13-45, an int of 5,000 digits: not YAML errors in PyYAML
            kind = node.tag.replace(_TAG, "")
            raise ConfigError(
                f"{self._where(node)}: YAML cannot read {_show(node.value)} as {_a(_TAG_KINDS.get(kind, kind))}: {e}",
                hint="fix the value, or quote it to make it text",
            ) from None


_StrictLoader.add_constructor(_MERGE, _StrictLoader.construct_yaml_str)  # `<<` as a value is just text
_StrictLoader.add_constructor(_VALUE, _StrictLoader.construct_yaml_str)  # so is `=`


def _load_yaml(text: str, *, source: str, prefix: _Path = (), label: str, hint: str) -> tuple[Any, dict[_Path, int]]:
    """Parse one YAML document strictly (see :class:`_StrictLoader`): its value, and the line of each key."""
    loader = None
    try:
        loader = _StrictLoader(text, source, prefix)  # reading starts here: a NUL byte is refused at once
        node = loader.get_single_node()
        if node is None:
            return None, {}
        loader.survey(node)
        return loader.construct_document(node), loader.lines
    except yaml.YAMLError as e:
        if "'\\t'" in str(e):
            hint = "indent with spaces: YAML does not allow tabs for indentation"
        raise ConfigError(f"{label} is not valid YAML: {e}", hint=hint) from None
    except RecursionError:
        raise ConfigError(f"{label} is nested too deeply to read", hint="a job config is a few levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


# -- environment variables ----------------------------------------------------------------------------------------

_ENV = re.compile(r"\$(?P<escape>\$)?\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})?")


MANIFEST_ENV_PATHS: tuple[_Path, ...] = (("spark", "conf"), ("kubernetes", "env"))
"""Values that ``scoring render k8s`` copies into manifests: loaded with ``keep_env_refs``, their ``${VAR}`` are kept
as written, never read from this environment (a credential there stays a reference; the pods provide the variable)."""


def _expand_text(value: str, source: str, path: _Path, keep_env_refs: bool = False) -> str:
    keep = keep_env_refs and any(path[: len(prefix)] == prefix for prefix in MANIFEST_ENV_PATHS)

    def sub(m: re.Match[str]) -> str:
        if m["escape"]:
            return m[0] if keep else m[0][1:]
        name, default = m["name"], m["default"]
        if name is None:
            raise ConfigError(
                f"{_located(source, path)}: {_show(value)} has a ${{ that is not ${{VAR}} or ${{VAR:-default}}",
                hint="names are letters, digits and _, not starting with a digit; write $${ for a literal ${",
            )
        if default is not None and "${" in default:
            raise ConfigError(
                f"{_located(source, path)}: {_show(value)} nests ${{...}} in a default, which is not supported",
                hint=f"write a plain default, e.g. ${{{name}:-/some/path}}",
            )
        if keep:
            return m[0]
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        if keep_env_refs:  # unset where the manifests are rendered: the pods expand it
            return m[0]
        raise ConfigError(
            f"{_located(source, path)}: environment variable {name} is not set",
            hint=f"export {name}=..., or write ${{{name}:-default}}",
        )

    return _ENV.sub(sub, value)


def _expand_env(value: Any, source: str, path: _Path = (), keep_env_refs: bool = False) -> Any:
    """Expand ``${VAR}`` in every string value (never in keys) of a parsed tree; copies dicts and lists."""
    if isinstance(value, str):
        return _expand_text(value, source, path, keep_env_refs)
    if isinstance(value, dict):
        expanded = {}
        for key, item in value.items():
            if isinstance(key, str) and "${" in key:
                raise ConfigError(
                    f"{_located(source, (*path, key))}: environment variables expand in values, not in keys",
                    hint="write the key out; ${VAR} may appear in its value",
                )
            expanded[key] = _expand_env(item, source, (*path, key), keep_env_refs)
        return expanded
    if isinstance(value, list):
        return [_expand_env(item, source, (*path, i), keep_env_refs) for i, item in enumerate(value)]
    return value


# -- overrides ----------------------------------------------------------------------------------------------------


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; values are parsed as YAML; the last of one key wins."""
    if isinstance(overrides, (str, bytes)):
        raise ConfigError(
            f"{_SET} {_show(overrides)}: overrides are a list of KEY=VALUE strings, not one string",
            hint=f"pass [{_show(overrides)}]",
        )
    parsed: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str):
            raise ConfigError(
                f"{_SET} {_show(item)} is not a KEY=VALUE string", hint="pass strings like input.version=3"
            )
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"{_SET} {_show(item)} is not KEY=VALUE", hint="write e.g. --set input.table=/data/features"
            )
        parts = tuple(key.split("."))
        if not all(part.strip() for part in parts):
            raise ConfigError(
                f"{_SET} {_show(item)}: the key {_show(key)} has an empty part",
                hint="a key is a dotted path of names, e.g. input.table (no leading, trailing or doubled dots)",
            )
        value = (
            _load_yaml(
                raw,
                source=_SET,
                prefix=parts,
                label=f"{_SET} {key}: the value {_show(raw)}",
                hint=f"""quote the value to pass it as text, e.g. --set '{key}="..."'""",
            )[0]
            if raw.strip()
            else ""
        )
        parsed.pop(key, None)
        parsed[key] = value
    return parsed


def _options(annotation: Any) -> list[Any]:
    """The types a value of `annotation` may have: Optional and unions unwrapped (None left out), Annotated stripped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _options(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [option for arg in get_args(annotation) if arg is not type(None) for option in _options(arg)]
    return [annotation]


def _step(annotation: Any, part: Any) -> Any:
    """The annotation one step down `part` (a field name, a list index, a dict key) from `annotation`, or None."""
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            field = option.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                return field.annotation
        elif get_origin(option) is list and isinstance(part, int):
            return get_args(option)[0]
        elif get_origin(option) is dict:
            return get_args(option)[1]
    return None


def _apply(tree: dict[str, Any], dotted: str, value: Any) -> _Path:
    """Set `dotted` in `tree` to `value`; the path it set (list indexes as ints, a ``spark.conf`` key whole)."""
    parts: list[Any] = dotted.split(".")
    node: Any = tree
    annotation: Any = JobConfig
    done: list[Any] = []
    while True:
        if len(parts) > 1 and any(get_origin(o) is dict for o in _options(annotation)):
            parts = [".".join(parts)]  # a mapping of free-form keys (spark.conf): the rest is one key
        part, parts = parts[0], parts[1:]
        key: Any = part
        if isinstance(node, list):
            if not re.fullmatch(r"[0-9]+", part) or int(part) >= len(node):
                indexes = f"index an item from 0 to {len(node) - 1}, or " if node else ""
                raise ConfigError(
                    f"{_SET} {dotted}: {_dotted(done)} is a list of {len(node)} item(s); {_show(part)} is not one "
                    "of its indexes",
                    hint=f"{indexes}set the whole list: --set '{_dotted(done)}=[...]'",
                )
            key = int(part)
        if not parts:
            node[key] = value
            return (*done, key)
        child = node[key] if isinstance(node, list) else node.get(key)
        if child is None:  # absent, or null in the file: a section to fill
            child = node[key] = {}
        elif not isinstance(child, (dict, list)):
            raise ConfigError(
                f"{_SET} {dotted}: {_dotted((*done, key))} is {_show(child)} ({_kind(child)}), not a mapping or a list",
                hint=f"set the whole {_dotted((*done, key))} instead, or drop the --set or key that made it "
                f"{_kind(child)}",
            )
        node = child
        done.append(key)
        annotation = _step(annotation, key)


# -- validation ---------------------------------------------------------------------------------------------------


def _fields_at(loc: _Path) -> list[str]:
    """Field names allowed at `loc` (the parent of a bad key), for "did you mean" hints. Looks through optional
    sections (``schedule``), list items (``quality.input.expectations.0``) and dict values."""
    annotation: Any = JobConfig
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    models = [o for o in _options(annotation) if isinstance(o, type) and issubclass(o, BaseModel)]
    return list(models[0].model_fields) if models else []


def _problem(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    dotted = _dotted(loc)
    kind = error["type"]
    got = error.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        bad = str(loc[-1])
        close = difflib.get_close_matches(bad, allowed, n=1)
        if "." in bad and bad.split(".")[0] in allowed:
            hint = " (a key is one name, not a dotted path: nest it, e.g. input: {table: ...})"
        elif close:
            hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?)"
        else:
            hint = ""
        return f"{dotted}: unknown key{hint}; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{dotted}: required key is missing"
    if kind == "value_error":
        return f"{dotted}: {error['msg'].removeprefix('Value error, ')}"
    shown = "" if isinstance(got, dict) else f" (got {_show(got)})"
    advice = ""
    if kind == "string_type" and isinstance(got, (bool, int, float, dt.date)):
        advice = f"; YAML reads this unquoted value as {_kind(got)}: quote it to make it text"
    elif kind == "string_type" and isinstance(got, (dict, list)):
        advice = f"; YAML reads this value as {_kind(got)} (a ': ', '[' or '{{' in it?): quote it to make it text"
    elif kind == "finite_number":
        advice = "; .inf, .nan and numbers beyond 1.8e308 are refused"
    return f"{dotted}: {error['msg']}{shown}{advice}"


def _describe(error: Mapping[str, Any], lines: Mapping[_Path, int], applied: list[tuple[str, _Path]]) -> str:
    loc = tuple(error["loc"])
    via = [key for key, path in applied if loc[: len(path)] == path or path[: len(loc)] == loc]
    if via:
        return f"{_problem(error)} (from {_SET} {via[-1]})"
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    return f"line {line}: {_problem(error)}" if line else _problem(error)


def build_job_config(raw: Mapping[str, Any], *, source: str = "<config>", overrides: Iterable[str] = ()) -> JobConfig:
    """Validate a config tree (e.g. parsed YAML) with ``key=value`` overrides applied; errors name `source`."""
    return _build(raw, source, overrides, {})


def _build(
    raw: Any, source: str, overrides: Iterable[str], lines: Mapping[_Path, int], keep_env_refs: bool = False
) -> JobConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{source}: a job config is a mapping of sections (input:, model:, output:, ...), found {_kind(raw)}",
            hint="start from conf/jobs/demo.yaml",
        )
    applied: list[tuple[str, _Path]] = []
    try:
        parsed = parse_overrides(overrides)
        tree = _expand_env(dict(raw), source, (), keep_env_refs)
        for dotted, value in parsed.items():
            value = _expand_env(value, _SET, tuple(dotted.split(".")), keep_env_refs)
            applied.append((dotted, _apply(tree, dotted, value)))
        return JobConfig.model_validate(tree)
    except ValidationError as e:
        problems = "\n".join(f"  {_describe(err, lines, applied)}" for err in e.errors())
        raise ConfigError(
            f"{source}: invalid job config ({e.error_count()} problem{'s' * (e.error_count() > 1)}):\n{problems}",
            hint="fix the keys above in the file or in --set; `scoring run --help` lists the config keys",
        ) from None
    except RecursionError:
        raise ConfigError(
            f"{source}: the config is nested too deeply (or contains itself)", hint="a job config is a few levels deep"
        ) from None


def _read(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file", hint="pass the path of a YAML job config, e.g. conf/jobs/demo.yaml"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path}: is a folder, not a config file",
            hint="pass the path of a YAML job config, e.g. conf/jobs/demo.yaml",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{path}: cannot be read (permission denied)", hint="make the file readable by this user (chmod u+r)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}", hint="pass a readable YAML file") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_FILE_BYTES:,} bytes; a job config is a few KiB",
            hint="is this the right file?",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise ConfigError(
            f"{path}, line {line}, column {column}: not UTF-8 text (byte {data[e.start]:#04x})",
            hint="save the file as UTF-8",
        ) from None


def load_job_config(
    path: str | os.PathLike[str], overrides: Iterable[str] = (), *, keep_env_refs: bool = False, text: str | None = None
) -> JobConfig:
    """Read a YAML job config, apply ``key=value`` overrides, and validate it strictly.

    `keep_env_refs`: load it for manifests (``scoring render k8s``): ``${VAR}`` in :data:`MANIFEST_ENV_PATHS` stay as
    written and unset variables elsewhere are left as written (see the module's docstring). `text`: the file's text,
    when already read (`path` then only names it)."""
    path = Path(path)
    raw, lines = _load_yaml(
        _read(path) if text is None else text,
        source=str(path),
        label=str(path),
        hint="fix the YAML at the line shown; quote values that contain ': ' or start with a special character",
    )
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a job config is a YAML mapping of sections (input:, model:, output:, ...), found {_kind(raw)}",
            hint="start from conf/jobs/demo.yaml",
        )
    raw.setdefault("name", path.stem)
    return _build(raw, str(path), overrides, lines, keep_env_refs)
