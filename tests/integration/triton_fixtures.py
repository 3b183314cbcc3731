"""Session-scoped Triton fixtures: one real ``tritonserver`` per test session, serving the champion ONNX model.

Test modules load these as a plugin, so that every module shares the one server (a fixture function imported into two
modules would start two)::

    pytest_plugins = ["tests.integration.triton_fixtures"]

Fixtures: ``champion`` (the ``onnx_clf@champion`` ModelRef, from the session's MLflow registry), ``triton_repository``
(the champion exported as a Python-backend model), ``triton_server`` (a started server's ``ServerHandle``; stopped by
pid at the end of the session).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.launchers import triton_server as ts


@pytest.fixture(scope="session")
def champion(lake):
    """The ``models:/onnx_clf@champion`` version the lake's registry holds, resolved once."""
    from scoring.adapters.registry import resolve_model

    return resolve_model("models:/onnx_clf@champion")


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory, champion) -> Path:
    """A Triton model repository holding the champion, exported for the Python backend (what our server has)."""
    from scoring.adapters.triton_export import export_model

    repo = tmp_path_factory.mktemp("triton-repository")
    export_model(champion, repo, target="python")
    return repo


@pytest.fixture(scope="session")
def triton_server(triton_repository):
    """One ``tritonserver`` for the session (gRPC, HTTP and shared memory all go to it)."""
    handle = ts.start_server(triton_repository, ready_timeout_s=120)
    try:
        yield handle
    finally:
        ts.stop_server(handle)
