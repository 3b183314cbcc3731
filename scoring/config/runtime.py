"""The ``runtime:`` section: where the model runs (embedded, or a Triton server) and in what batches."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from scoring.config.base import (
    _INT32_MAX,
    MAX_RETRIES,
    _at_most,
    _BatchRows,
    _Int,
    _Micros,
    _Seconds,
    _Strict,
    _Threads,
)


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
