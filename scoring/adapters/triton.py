"""The ``triton`` runtime: Arrow batches scored by a Triton Inference Server beside the worker.

One client per Python worker (created once, reused for every batch). A batch's feature matrix goes to the server as
binary tensors (or through a system shared-memory region), split into requests of ``batch_rows``. A task's batches are
pipelined (:meth:`TritonPredictor.predict_stream`): up to ``max_inflight`` requests are in flight across batches, each
in a thread of the predictor's own (with its own client and shared-memory regions: one per request in flight), while
the task's thread converts the next batch; outputs come back in input order, the input is pulled no faster than
requests free up, and an error is raised at its batch's turn. Every call has a deadline.

Failures are classified where tritonclient raises them, by what they are, never by their text: see
:mod:`scoring.adapters.triton_failures` (and the table there of what the bundled server answered).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import functools
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from scoring.adapters.triton_failures import (  # noqa: F401 - re-exported
    _OTHER_TERMINAL_HINT,
    _TERMINAL_HINTS,
    _TRANSIENT_HINT,
    TRANSIENT_GRPC_STATUSES,
    TRANSIENT_HTTP_STATUSES,
    _describe,
    _is_client_failure,
    _status,
    is_transient_failure,
)
from scoring.core.batching import feature_matrix, in_flight, name_outputs
from scoring.core.tensors import TensorLayout, feed, input_names, layouts
from scoring.errors import BackendUnavailableError, ModelError, ScoringError, is_transient, require_extra

_LOGGER = logging.getLogger(__name__)

TRITON_URL_ENV = "SCORING_TRITON_URL"
"""The gRPC address (``host:port``) of the Triton sidecar beside this process. When set, a worker's predictor talks to
it instead of ``runtime.triton.url`` (see :meth:`TritonSpec.create`)."""

TRITON_HTTP_URL_ENV = "SCORING_TRITON_HTTP_URL"
"""The same for the HTTP protocol (``runtime.triton.protocol: http``)."""

_TRITON_TO_NUMPY = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "FP16": np.float16,
    "BOOL": np.bool_,
}


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
    tensors: tuple[TensorLayout, ...] = ()
    """Which model input each feature column feeds (``input.tensors``); empty: the input of the column's name. Used
    when the model takes several inputs, or its one input is named by a column (an array column): see
    :class:`_Feeds`."""

    def create(self) -> TritonPredictor:
        """The predictor for this spec, talking to the sidecar of the host it runs on when that is known.

        ``$SCORING_TRITON_URL`` (``$SCORING_TRITON_HTTP_URL`` for HTTP), when set, takes the place of `url`: the
        driver resolves one url for the whole run, but on a cluster every executor must use the sidecar beside it,
        never another host's. This is the discovery a pod makes by loopback (the sidecar shares the pod's network,
        the variable would be ``127.0.0.1:8001``); ``scoring cluster up`` sets it in each worker's environment,
        which its executors and their Python workers inherit (:mod:`scoring.deploy.cluster`). The version check still
        applies: a sidecar that does not serve the run's version is an error, not a silent fallback."""
        variable = TRITON_URL_ENV if self.protocol == "grpc" else TRITON_HTTP_URL_ENV
        local = os.environ.get(variable, "").strip()
        if local and local != self.url:
            _LOGGER.info("Triton: the sidecar of this host at %s (from $%s), not %s", local, variable, self.url)
            return TritonPredictor(dataclasses.replace(self, url=local))
        return TritonPredictor(self)


def _where(spec: TritonSpec) -> str:
    """What every message names: model, version, url and protocol."""
    return f"model {spec.model_name} version {spec.model_version} at {spec.url} ({spec.protocol})"


class _Client:
    """A protocol-neutral face over tritonclient's gRPC and HTTP clients."""

    def __init__(self, spec: TritonSpec) -> None:
        self.spec = spec
        require_extra("triton", "runtime.backend: triton")
        if spec.protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
        self.mod = mod
        if "://" in spec.url:  # tritonclient refuses it too, but leaves a half-made client whose __del__ fails
            raise ModelError(
                f"Triton url {spec.url!r} has a scheme; tritonclient takes host:port",
                hint="set runtime.triton.url to host:port, e.g. 127.0.0.1:8001",
            )
        try:
            if spec.protocol == "grpc":
                self.client = mod.InferenceServerClient(spec.url)
            else:
                self.client = mod.InferenceServerClient(
                    spec.url, connection_timeout=spec.timeout_s, network_timeout=spec.timeout_s
                )
        except Exception as e:
            if not _is_client_failure(e):
                raise
            raise ModelError(
                f"cannot open a Triton {spec.protocol} client for {spec.url}: {_describe(e)}",
                hint="runtime.triton.url is host:port, without a scheme",
            ) from e

    def call(self, method: str, *args, what: str | None = None, **kwargs):
        """Call tritonclient's `method`; its failures come out typed (see :func:`is_transient_failure`):
        `BackendUnavailableError` when a retry may help, `ModelError` otherwise, chained to the original.
        `what` names the call in the message (default: the method's name)."""
        if self.spec.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.spec.timeout_s)
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except BaseException as e:  # gevent.Timeout is a BaseException; anything not a call failure is re-raised
            if not _is_client_failure(e):
                raise
            message = f"{_where(self.spec)}: {what or method} failed: {_describe(e)}"
            if is_transient_failure(e):
                raise BackendUnavailableError(message, hint=_TRANSIENT_HINT) from e
            raise ModelError(message, hint=_TERMINAL_HINTS.get(_status(e) or "", _OTHER_TERMINAL_HINT)) from e

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
        self._regions: list[tuple[str, object]] = []
        self._lock = threading.Lock()
        try:
            self._connect()
        except BaseException:
            self.close()  # the client made so far
            raise
        self._pool = concurrent.futures.ThreadPoolExecutor(spec.max_inflight, thread_name_prefix="triton")
        atexit.register(self.close)

    def _connect(self) -> None:
        """Wait for the server, check it serves the version, and read the model's input and outputs."""
        spec = self.spec
        client = self._client()
        self._wait_ready(client)
        self._check_version(client)
        meta = client.call("get_model_metadata", spec.model_name, spec.model_version, what="reading the metadata")
        meta = meta if isinstance(meta, dict) else _grpc_meta(meta)
        self._outputs = [
            (o["name"], _TRITON_TO_NUMPY.get(o["datatype"], np.float32), o["shape"]) for o in meta["outputs"]
        ]
        self._layout = spec.tensors or layouts(spec.features, None)
        self._named = len(meta["inputs"]) > 1 or input_names(self._layout) == (meta["inputs"][0]["name"],)
        if self._named:  # one tensor per input, each from its column
            self._named_inputs(meta["inputs"])
            return
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

    # -- connection ------------------------------------------------------------------------------------------------

    def _client(self) -> _Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = _Client(self.spec)
            with self._lock:
                self._clients.append(client)
        return client

    def _where(self) -> str:
        return _where(self.spec)

    def _wait_ready(self, client: _Client) -> None:
        """Poll until the server says it is ready; a transient failure is waited out, a terminal one raised."""
        deadline = time.monotonic() + self.spec.timeout_s
        last: BackendUnavailableError | None = None
        while time.monotonic() < deadline:
            try:
                if client.call("is_server_ready", what="asking whether the server is ready"):
                    return
            except BackendUnavailableError as e:  # not up yet
                last = e
            time.sleep(0.2)
        raise BackendUnavailableError(
            f"Triton server at {self.spec.url} ({self.spec.protocol}) was not ready within {self.spec.timeout_s:g} s"
            + (f": {_describe(last.__cause__ or last)}" if last else ""),
            hint="start it (scoring sidecar start --repository DIR), check runtime.triton.url, "
            "or use runtime.triton.launch: auto",
        )

    def _check_version(self, client: _Client) -> None:
        ready = client.call(
            "is_model_ready", self.spec.model_name, self.spec.model_version, what="asking whether the model is ready"
        )
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
        except ScoringError:  # the index is only for the message
            _LOGGER.debug("cannot read the model repository index", exc_info=True)
        raise ModelError(
            f"the run resolved {self.spec.model_uri}, but the Triton server at {self.spec.url} does not serve "
            f"{self.spec.model_name} version {self.spec.model_version} (served: {', '.join(served) or 'nothing'})",
            hint=f"export that version (scoring export {self.spec.model_uri} --repository DIR) and let the server "
            "load it, or use runtime.triton.launch: auto",
        )

    # -- inference -------------------------------------------------------------------------------------------------

    def predict(self, features: pa.RecordBatch) -> pa.RecordBatch:
        (outputs,) = self._stream([features])
        return outputs

    def predict_stream(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Predictions for each batch of `batches`, in order, with up to ``max_inflight`` requests in flight across
        batches: while the server computes one batch's requests, this thread converts the next batch (see
        :class:`~scoring.core.predictor.PipelinedPredictor` and :func:`~scoring.core.batching.in_flight` for order,
        back-pressure, errors and early close). A failed request fails the stream at its batch's turn, with the
        batch named in the message beside the server."""
        return self._stream(batches, on_error=_in_batch)

    def _stream(self, batches: Iterable[pa.RecordBatch], on_error=None) -> Iterator[pa.RecordBatch]:
        stop = threading.Event()  # set once the stream fails or is closed: requests still retrying give up
        step = self.spec.batch_rows

        def split(features: pa.RecordBatch):
            if features.num_rows == 0:  # Triton refuses a 0-row request (INVALID_ARGUMENT): answered here
                return 0, []
            if self._named:
                tensors = self._feeds(features)
                chunks = [tensors.rows_slice(i, step) for i in range(0, features.num_rows, step)]
                return features.num_rows, [functools.partial(self._infer_with_retries, c, stop) for c in chunks]
            matrix = feature_matrix(features, self.spec.features, self._input_dtype)
            chunks = [matrix[i : i + step] for i in range(0, len(matrix), step)]
            return features.num_rows, [functools.partial(self._infer_with_retries, c, stop) for c in chunks]

        def join(rows: int, parts: list[dict[str, np.ndarray]]) -> pa.RecordBatch:
            if rows == 0:  # the metadata knows the outputs' shapes
                return name_outputs(
                    {name: np.empty((0, *_fixed_dims(shape[1:])), dtype) for name, dtype, shape in self._outputs}, 0
                )
            if len(parts) == 1:
                return name_outputs(parts[0], rows)
            return name_outputs({name: np.concatenate([p[name] for p in parts]) for name, _, _ in self._outputs}, rows)

        return in_flight(batches, split, join, self._pool.submit, self.spec.max_inflight, stop=stop, on_error=on_error)

    def _infer_with_retries(self, chunk: np.ndarray, stop: threading.Event | None = None) -> dict[str, np.ndarray]:
        """One request; retried while its failure is `Transient` (by type), at most ``max_retries`` times, and not
        once `stop` is set (an earlier request failed for good, or the stream was closed)."""
        attempt = 0
        while True:
            try:
                return self._infer(chunk)
            except ScoringError as e:
                if not is_transient(e):
                    raise  # a ModelError from _Client.call: the server's message, chained, no retry
                cause = e.__cause__
                last = e.message if cause is None or isinstance(cause, ScoringError) else _describe(cause)
                if attempt >= self.spec.max_retries or (stop is not None and stop.is_set()):
                    raise BackendUnavailableError(
                        f"{self._where()} gave up after {attempt + 1} attempt(s) on a request of {len(chunk)} rows; "
                        f"last error: {last}",
                        hint=_TRANSIENT_HINT,
                    ) from e
                delay = min(8.0, 0.1 * 2**attempt) * (0.5 + random.random())  # noqa: S311 - jitter, not crypto
                _LOGGER.warning(
                    "%s: transient failure (%s); retry %d in %.2f s", self._where(), last, attempt + 1, delay
                )
                if stop is not None:
                    stop.wait(delay)  # wakes at once when the stream stops
                else:
                    time.sleep(delay)
                attempt += 1
                self._local.client = None  # reconnect: the old channel may be broken

    def _named_inputs(self, inputs: list[dict]) -> None:
        """Check that every input of a several-input (or array-input) model is fed by a feature column."""
        self._inputs = {i["name"]: i for i in inputs}
        missing = [name for name in self._inputs if name not in input_names(self._layout)]
        if missing:
            raise ModelError(
                f"Triton model {self.spec.model_name} version {self.spec.model_version} has inputs {missing} that "
                f"no feature column feeds (features {list(self.spec.features)})",
                hint="name the model's inputs in input.features, or map a column to each with "
                "input.tensors.<column>.input",
            )
        if self.spec.shared_memory == "system":
            raise ModelError(
                f"Triton model {self.spec.model_name} takes named tensor inputs; runtime.triton.shared_memory: system "
                "carries one feature matrix only",
                hint="set runtime.triton.shared_memory: none (tensors go as binary data over the socket)",
            )

    def _feeds(self, features: pa.RecordBatch) -> _Feeds:
        """Each input's tensor for `features`, in the dtype the server declares (see :func:`scoring.core.tensors.feed`)."""
        arrays = {}
        for t in self._layout:
            inp = self._inputs.get(t.input)
            if inp is not None:
                dtype = _TRITON_TO_NUMPY.get(inp["datatype"], np.float32)
                arrays[t.input] = feed(features.column(t.column), t, dtype, inp["shape"], self.spec.model_uri)
        return _Feeds(arrays, features.num_rows)

    def _infer(self, chunk: np.ndarray | _Feeds) -> dict[str, np.ndarray]:
        client = self._client()
        if isinstance(chunk, _Feeds):
            return self._infer_named(client, chunk)
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
                what=f"a request of {len(chunk)} rows",
            )
        else:
            inp.set_data_from_numpy(chunk)
            outputs = [mod.InferRequestedOutput(name) for name, _, _ in self._outputs]
            result = client.call(
                "infer",
                self.spec.model_name,
                [inp],
                model_version=self.spec.model_version,
                outputs=outputs,
                what=f"a request of {len(chunk)} rows",
            )
        return {name: result.as_numpy(name) for name, _, _ in self._outputs}

    def _infer_named(self, client: _Client, chunk: _Feeds) -> dict[str, np.ndarray]:
        """One request with a binary tensor per input (named-input models), outputs as binary tensors."""
        mod, http = client.mod, self.spec.protocol == "http"
        inputs = []
        for name, values in chunk.arrays.items():
            inp = mod.InferInput(name, list(values.shape), self._inputs[name]["datatype"])
            inp.set_data_from_numpy(values, **({"binary_data": True} if http else {}))
            inputs.append(inp)
        kwargs = {"binary_data": True} if http else {}
        result = client.call(
            "infer",
            self.spec.model_name,
            inputs,
            model_version=self.spec.model_version,
            outputs=[mod.InferRequestedOutput(name, **kwargs) for name, _, _ in self._outputs],
            **({"timeout": int(self.spec.timeout_s * 1e6)} if http else {}),
            what=f"a request of {len(chunk)} rows",
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
        try:
            client.call(
                "infer",
                self.spec.model_name,
                [inp],
                model_version=self.spec.model_version,
                outputs=outputs,
                what=f"a request of {len(chunk)} rows (system shared memory)",
            )
        except ModelError as e:
            if _status(e.__cause__) not in ("NOT_FOUND", "404") or not self._regions_lost(client, in_handle["name"]):
                raise
            # A restarted server forgot the regions, while the client reconnected by itself: register them again.
            self._local.regions = None
            raise BackendUnavailableError(
                f"{self._where()}: the server no longer has this worker's shared-memory region {in_handle['name']} "
                "(did it restart?); registering the regions again",
                hint=_TRANSIENT_HINT,
            ) from e
        return {
            name: shm.get_contents_as_numpy(out_handles[name]["handle"], dtype, dims).copy()
            for name, (dims, dtype) in shapes.items()
        }

    def _regions_lost(self, client: _Client, name: str) -> bool:
        """Whether the server's list of registered system shared-memory regions lacks `name` (asked, not guessed)."""
        try:
            status = client.call("get_system_shared_memory_status", what="reading the shared-memory status")
        except ScoringError:
            return False
        names = {r["name"] for r in status} if isinstance(status, list) else set(status.regions)
        return name not in names

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
            client.call(
                "register_system_shared_memory", name, f"/{name}", size, what=f"registering shared memory /{name}"
            )
            with self._lock:
                self._regions.append((name, handle))
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
        """Unregister and free shared-memory regions, close connections. Safe to call twice, from any thread."""
        with self._lock:
            regions, self._regions = self._regions, []
            clients, self._clients = self._clients, []
        if regions:
            self._release(regions)
        for client in clients:
            client.close()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def _release(self, regions: list[tuple[str, object]]) -> None:
        """Unregister `regions` through a client of the calling thread (an HTTP client works only in the thread that
        made it; regions are the server's, whichever client registered them), then free them here."""
        import tritonclient.utils.shared_memory as shm

        closer: _Client | None = None
        try:
            closer = _Client(self.spec)
        except ScoringError:
            _LOGGER.debug("cannot open a client to unregister shared memory", exc_info=True)
        for name, handle in regions:
            if closer is not None:
                try:
                    closer.call("unregister_system_shared_memory", name, what=f"unregistering shared memory {name}")
                except ScoringError:  # the server may be gone already
                    _LOGGER.debug("cannot unregister %s", name, exc_info=True)
            try:
                shm.destroy_shared_memory_region(handle)
            except Exception:  # SharedMemoryException: already gone
                _LOGGER.debug("cannot destroy %s", name, exc_info=True)
        if closer is not None:
            closer.close()


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


@dataclasses.dataclass(frozen=True)
class _Feeds:
    """One request's tensors for a named-input model: input name -> ``(rows, ...)`` array; ``len`` is its rows."""

    arrays: dict[str, np.ndarray]
    rows: int

    def __len__(self) -> int:
        return self.rows

    def rows_slice(self, start: int, count: int) -> _Feeds:
        arrays = {name: values[start : start + count] for name, values in self.arrays.items()}
        return _Feeds(arrays, min(count, self.rows - start))


def _in_batch(error: BaseException, index: int) -> BaseException:
    """`error` of a request of the stream's batch `index` (0-based), with the batch named in its message."""
    if not isinstance(error, ScoringError):
        return error
    return type(error)(f"Arrow batch {index + 1} of this task: {error.message}", hint=error.hint)


def _fixed_dims(dims) -> list[int]:
    """An output's non-batch dimensions; a variable one (-1) is only known from a real answer, so an empty result
    gives it width 2: a list column, as any width above 1 makes."""
    return [int(d) if int(d) >= 0 else 2 for d in dims]


def _grpc_meta(meta) -> dict:
    return {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in meta.outputs],
    }
