"""The ``triton`` runtime: Arrow batches scored by a Triton Inference Server beside the worker.

One client per Python worker (created once, reused for every batch). A batch's feature matrix goes to the server as
binary tensors (or through a system shared-memory region), split into requests of ``batch_rows`` with up to
``max_inflight`` in flight so that the server's dynamic batcher has work to merge. Every call has a deadline;
transient failures are retried with exponential backoff and jitter; permanent ones fail at once with the model,
version, URL and the server's own message.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import logging
import os
import random
import threading
import time
import uuid

import numpy as np
import pyarrow as pa

from scoring.core.batching import feature_matrix, name_outputs
from scoring.errors import BackendUnavailableError, ModelError

_LOGGER = logging.getLogger(__name__)

_TRITON_TO_NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "FP16": np.float16,
    "BOOL": np.bool_,
}

# Messages of failures that may pass: the server restarting, a dropped connection, a full queue, a deadline.
_TRANSIENT = (
    "unavailable",
    "deadline",
    "timed out",
    "timeout",
    "connection refused",
    "failed to connect",
    "resource_exhausted",
    "exceeds maximum queue size",
    "queue",
    "overload",
    "socket closed",
    "connection reset",
    "broken pipe",
    "502",
    "503",
    "504",
    "cancelled",
)


@dataclasses.dataclass(frozen=True)
class TritonSpec:
    """What a worker needs to score through Triton; hashable, so it keys the per-worker predictor cache."""

    model_uri: str
    """``models:/<name>/<version>``, named in messages."""
    model_name: str
    """Name the server knows the model by."""
    model_version: str
    """The version the run resolved; the server must serve exactly it."""
    features: tuple[str, ...]
    url: str
    protocol: str = "grpc"
    shared_memory: str = "none"
    timeout_s: float = 30.0
    max_retries: int = 3
    batch_rows: int = 10_000
    max_inflight: int = 2

    def create(self) -> TritonPredictor:
        return TritonPredictor(self)


def is_transient(error: BaseException) -> bool:
    text = str(error).lower()
    return any(word in text for word in _TRANSIENT)


class _Client:
    """A protocol-neutral face over tritonclient's gRPC and HTTP clients."""

    def __init__(self, spec: TritonSpec) -> None:
        self.spec = spec
        if spec.protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        self.mod = mod
        if spec.protocol == "grpc":
            self.client = mod.InferenceServerClient(spec.url)
        else:
            self.client = mod.InferenceServerClient(
                spec.url, connection_timeout=spec.timeout_s, network_timeout=spec.timeout_s
            )

    def call(self, method: str, *args, **kwargs):
        if self.spec.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.spec.timeout_s)
        return getattr(self.client, method)(*args, **kwargs)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection
            _LOGGER.debug("closing the Triton client failed", exc_info=True)


class TritonPredictor:
    """A :class:`~scoring.core.predictor.Predictor` backed by a Triton server."""

    def __init__(self, spec: TritonSpec) -> None:
        self.spec = spec
        self._local = threading.local()
        self._clients: list[_Client] = []
        self._regions: list[tuple[_Client, str, object]] = []
        self._lock = threading.Lock()
        client = self._client()
        self._wait_ready(client)
        self._check_version(client)
        meta = client.call("get_model_metadata", spec.model_name, spec.model_version)
        meta = meta if isinstance(meta, dict) else _grpc_meta(meta)
        if len(meta["inputs"]) != 1:
            raise ModelError(
                f"Triton model {spec.model_name} version {spec.model_version} at {spec.url} takes "
                f"{len(meta['inputs'])} inputs; scoring sends one feature matrix",
                hint="export the model with one 2-D input (scoring export does)",
            )
        self._input = meta["inputs"][0]
        self._input_dtype = _TRITON_TO_NUMPY.get(self._input["datatype"], np.float32)
        width = int(self._input["shape"][-1])
        if width not in (-1, len(spec.features)):
            raise ModelError(
                f"Triton model {spec.model_name} version {spec.model_version} takes {width} features per row, "
                f"the job gives {len(spec.features)}: {list(spec.features)}",
                hint="set input.features to the model's feature columns, in training order",
            )
        self._outputs = [
            (o["name"], _TRITON_TO_NUMPY.get(o["datatype"], np.float32), o["shape"]) for o in meta["outputs"]
        ]
        self._pool = concurrent.futures.ThreadPoolExecutor(spec.max_inflight, thread_name_prefix="triton")
        atexit.register(self.close)

    # -- connection ------------------------------------------------------------------------------------------------

    def _client(self) -> _Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = _Client(self.spec)
            with self._lock:
                self._clients.append(client)
        return client

    def _where(self) -> str:
        return (
            f"model {self.spec.model_name} version {self.spec.model_version} at {self.spec.url} ({self.spec.protocol})"
        )

    def _wait_ready(self, client: _Client) -> None:
        deadline = time.monotonic() + self.spec.timeout_s
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if client.call("is_server_ready"):
                    return
            except Exception as e:  # not up yet
                last = e
            time.sleep(0.2)
        raise BackendUnavailableError(
            f"Triton server at {self.spec.url} ({self.spec.protocol}) was not ready within {self.spec.timeout_s:g} s"
            + (f": {last}" if last else ""),
            hint="start it (scoring sidecar start --repository DIR), check runtime.triton.url, "
            "or use runtime.triton.launch: auto",
        )

    def _check_version(self, client: _Client) -> None:
        try:
            ready = client.call("is_model_ready", self.spec.model_name, self.spec.model_version)
        except Exception as e:
            raise BackendUnavailableError(f"cannot ask {self._where()} whether it is ready: {e}") from e
        if ready:
            return
        served = []
        try:
            index = client.call("get_model_repository_index")
            index = (
                index
                if isinstance(index, list)
                else [{"name": m.name, "version": m.version, "state": m.state} for m in index.models]
            )
            served = [f"{m.get('name')}/{m.get('version') or '?'} {m.get('state', '')}".strip() for m in index]
        except Exception:  # the index is only for the message
            _LOGGER.debug("cannot read the model repository index", exc_info=True)
        raise ModelError(
            f"the run resolved {self.spec.model_uri}, but the Triton server at {self.spec.url} does not serve "
            f"{self.spec.model_name} version {self.spec.model_version} (served: {', '.join(served) or 'nothing'})",
            hint=f"export that version (scoring export {self.spec.model_uri} --repository DIR) and let the server "
            "load it, or use runtime.triton.launch: auto",
        )

    # -- inference -------------------------------------------------------------------------------------------------

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        matrix = feature_matrix(features, self.spec.features, self._input_dtype)
        step = self.spec.batch_rows
        chunks = [matrix[i : i + step] for i in range(0, max(len(matrix), 1), step)] or [matrix]
        if len(chunks) == 1 or self.spec.max_inflight == 1:
            parts = [self._infer_with_retries(c) for c in chunks]
        else:
            parts = list(self._pool.map(self._infer_with_retries, chunks))
        merged = {name: np.concatenate([p[name] for p in parts]) for name, _, _ in self._outputs}
        return name_outputs(merged, features.num_rows)

    def _infer_with_retries(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        attempt = 0
        while True:
            try:
                return self._infer(chunk)
            except Exception as e:
                if not is_transient(e):
                    raise ModelError(
                        f"{self._where()} refused a request of {len(chunk)} rows: {e}",
                        hint="check that the exported model matches the job's features",
                    ) from e
                if attempt >= self.spec.max_retries:
                    raise BackendUnavailableError(
                        f"{self._where()} gave up after {attempt + 1} attempt(s) on a request of {len(chunk)} rows; last error: {e}",
                        hint="check the server's health and load; raise runtime.triton.max_retries or timeout_s",
                    ) from e
                delay = min(8.0, 0.1 * 2**attempt) * (0.5 + random.random())  # noqa: S311 - jitter, not crypto
                _LOGGER.warning("%s: transient failure (%s); retry %d in %.2f s", self._where(), e, attempt + 1, delay)
                time.sleep(delay)
                attempt += 1
                self._local.client = None  # reconnect: the old channel may be broken

    def _infer(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        client = self._client()
        mod = client.mod
        inp = mod.InferInput(self._input["name"], list(chunk.shape), self._input["datatype"])
        if self.spec.shared_memory == "system":
            return self._infer_shm(client, inp, chunk)
        if self.spec.protocol == "http":
            inp.set_data_from_numpy(chunk, binary_data=True)
            outputs = [mod.InferRequestedOutput(name, binary_data=True) for name, _, _ in self._outputs]
            result = client.call(
                "infer",
                self.spec.model_name,
                [inp],
                model_version=self.spec.model_version,
                outputs=outputs,
                timeout=int(self.spec.timeout_s * 1e6),
            )
        else:
            inp.set_data_from_numpy(chunk)
            outputs = [mod.InferRequestedOutput(name) for name, _, _ in self._outputs]
            result = client.call(
                "infer", self.spec.model_name, [inp], model_version=self.spec.model_version, outputs=outputs
            )
        return {name: result.as_numpy(name) for name, _, _ in self._outputs}

    # -- system shared memory: one input and one output region per client (thread), registered once ----------------

    def _infer_shm(self, client: _Client, inp, chunk: np.ndarray) -> dict[str, np.ndarray]:
        import tritonclient.utils.shared_memory as shm

        regions = self._shm_regions(client, chunk)
        in_handle, out_handles = regions
        shm.set_shared_memory_region(in_handle["handle"], [np.ascontiguousarray(chunk)])
        inp.set_shared_memory(in_handle["name"], chunk.nbytes)
        outputs, shapes = [], {}
        for name, dtype, shape in self._outputs:
            dims = [len(chunk)] + [int(d) for d in shape[1:]]
            shapes[name] = (dims, dtype)
            size = int(np.prod(dims)) * np.dtype(dtype).itemsize
            out = (
                client.mod.InferRequestedOutput(name, binary_data=True)
                if self.spec.protocol == "http"
                else (client.mod.InferRequestedOutput(name))
            )
            out.set_shared_memory(out_handles[name]["name"], size)
            outputs.append(out)
        client.call("infer", self.spec.model_name, [inp], model_version=self.spec.model_version, outputs=outputs)
        return {
            name: shm.get_contents_as_numpy(out_handles[name]["handle"], dtype, dims).copy()
            for name, (dims, dtype) in shapes.items()
        }

    def _shm_regions(self, client: _Client, chunk: np.ndarray):
        import tritonclient.utils.shared_memory as shm

        regions = getattr(self._local, "regions", None)
        if regions is not None and getattr(self._local, "regions_client", None) is client:
            return regions
        rows = self.spec.batch_rows
        tag = f"scoring_{os.getpid()}_{uuid.uuid4().hex[:8]}"

        def region(suffix: str, size: int) -> dict:
            name = f"{tag}_{suffix}"
            handle = shm.create_shared_memory_region(name, f"/{name}", size)
            client.call("register_system_shared_memory", name, f"/{name}", size)
            with self._lock:
                self._regions.append((client, name, handle))
            return {"name": name, "handle": handle}

        in_region = region("in", rows * chunk.shape[1] * np.dtype(self._input_dtype).itemsize)
        out_regions = {}
        for i, (name, dtype, shape) in enumerate(self._outputs):
            width = int(np.prod([int(d) for d in shape[1:]] or [1]))
            out_regions[name] = region(f"out{i}", rows * max(width, 1) * np.dtype(dtype).itemsize)
        self._local.regions = (in_region, out_regions)
        self._local.regions_client = client
        return self._local.regions

    def close(self) -> None:
        """Unregister and free shared-memory regions, close connections. Safe to call twice."""
        import tritonclient.utils.shared_memory as shm

        with self._lock:
            regions, self._regions = self._regions, []
            clients, self._clients = self._clients, []
        for client, name, handle in regions:
            try:
                client.call("unregister_system_shared_memory", name)
            except Exception:  # the server may be gone already
                _LOGGER.debug("cannot unregister %s", name, exc_info=True)
            try:
                shm.destroy_shared_memory_region(handle)
            except Exception:
                _LOGGER.debug("cannot destroy %s", name, exc_info=True)
        for client in clients:
            client.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def serves(url: str, protocol: str, model_name: str, model_version: str, timeout_s: float = 2.0) -> bool:
    """Whether a server answers at `url` and has `model_name` version `model_version` ready (no retries, no errors)."""
    try:
        client = _Client(TritonSpec("", model_name, model_version, (), url, protocol, timeout_s=timeout_s))
    except Exception:  # a malformed URL is not a serving server
        return False
    try:
        return bool(client.call("is_server_ready") and client.call("is_model_ready", model_name, model_version))
    except Exception:  # nothing there, or not that model
        return False
    finally:
        client.close()


def _grpc_meta(meta) -> dict:
    return {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
    }
