"""Open the predictor for the configured backend: the embedded runtime, or a Triton server (a sidecar the run starts,
or one already serving the resolved version)."""

from __future__ import annotations

import contextlib
import functools
import tempfile

from scoring.adapters.embedded import EmbeddedSpec
from scoring.config import JobConfig
from scoring.core.tensors import layouts
from scoring.engine.model import PreparedModel
from scoring.engine.progress import Reporter
from scoring.errors import require_extra


@contextlib.contextmanager
def open_predictor(config: JobConfig, prepared: PreparedModel, reporter: Reporter):
    """The predictor spec for the configured backend (what each worker builds its predictor from); with
    ``launch: auto``, a Triton sidecar that serves the resolved version for as long as the block runs."""
    model, features = prepared.ref, prepared.features
    if config.runtime.backend == "embedded":
        yield EmbeddedSpec(
            model_uri=model.uri,
            local_path=model.local_path,
            flavors=model.flavors,
            features=features,
            threads=config.runtime.embedded.threads,
            tracking_uri=model.tracking_uri,
            registry_uri=model.registry_uri,
            tensors=layouts(features, config.input.tensors),
        )
        return
    require_extra("triton", "runtime.backend: triton")
    from scoring.adapters import triton_export
    from scoring.adapters.triton import TritonSpec

    triton = config.runtime.triton
    spec = functools.partial(
        TritonSpec,
        model_uri=model.uri,
        model_name=triton_export.triton_model_name(model),
        model_version=model.version,
        features=features,
        protocol=triton.protocol,
        shared_memory=triton.shared_memory,
        timeout_s=triton.timeout_s,
        max_retries=triton.max_retries,
        batch_rows=triton.batch_rows,
        max_inflight=triton.max_inflight,
        tensors=layouts(features, config.input.tensors),
    )
    if triton.launch == "external":
        yield spec(url=triton.url or ("127.0.0.1:8001" if triton.protocol == "grpc" else "127.0.0.1:8000"))
        return
    from scoring.adapters.triton import serves
    from scoring.launchers import triton_server

    name = triton_export.triton_model_name(model)
    if triton.url and serves(triton.url, triton.protocol, name, model.version):
        reporter.step(f"a Triton server at {triton.url} already serves {name} version {model.version}; using it")
        yield spec(url=triton.url)
        return

    with contextlib.ExitStack() as stack:
        repository = triton.repository or stack.enter_context(tempfile.TemporaryDirectory(prefix="scoring-repo-"))
        export = triton_export.export_model(
            model, repository, target=triton.target, model_config=triton.model, n_features=len(features)
        )
        reporter.step(f"starting a Triton sidecar for {export.model_name} version {export.version} ({repository})")
        handle = stack.enter_context(
            triton_server.running_server(
                repository, models=[export.model_name], ready_timeout_s=max(60.0, triton.timeout_s)
            )
        )
        reporter.step(f"sidecar ready: grpc {handle.grpc_url}, http {handle.http_url}")
        try:
            yield spec(url=handle.grpc_url if triton.protocol == "grpc" else handle.http_url)
        finally:
            from scoring.adapters.runtime import forget_all

            forget_all()  # the driver's client points at a server that is about to stop
