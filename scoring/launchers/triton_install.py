"""Where the local Triton server comes from: the ``tritonserver`` binary bundled in the ``nvidia-pytriton`` wheel, the
environment it and its Python-backend stubs need, and the writable backend directory it is pointed at (see
:mod:`scoring.launchers.triton_server` and ``/work/shared/TRITON.md``)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from scoring.errors import ScoringError, require_extra

_LOGGER = logging.getLogger(__name__)

_INSTALL_HINT = (
    "install the triton extra (`pip install -c constraints.txt 'scoring[triton]'`, or `make setup`), which includes "
    "nvidia-pytriton"
)


def _tritonserver_root() -> Path:
    """``site-packages/pytriton/tritonserver``, found without importing pytriton (its import is slow and noisy)."""
    import importlib.util

    require_extra("triton", "the local Triton server (scoring sidecar, runtime.triton.launch: auto)")
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ScoringError(
            "the Triton server is not installed: the Python package `pytriton` (nvidia-pytriton) is missing",
            hint=_INSTALL_HINT,
        )
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def find_tritonserver() -> Path:
    """The ``tritonserver`` binary bundled with nvidia-pytriton; a `ScoringError` with a how-to-fix hint if missing."""
    binary = _tritonserver_root() / "bin" / "tritonserver"
    if not binary.is_file():
        raise ScoringError(f"the Triton server binary is missing: {binary}", hint=_INSTALL_HINT)
    if not os.access(binary, os.X_OK):
        raise ScoringError(
            f"the Triton server binary is not executable: {binary}",
            hint=f"chmod +x {binary}, or reinstall nvidia-pytriton",
        )
    return binary


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _library_path() -> list[str]:
    """Directories for ``LD_LIBRARY_PATH``, in order: this interpreter's libpython first, then the wheel's libraries."""
    root = _tritonserver_root()
    candidates: list[Path] = []
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        candidates.append(Path(libdir))
        if not any(Path(libdir).glob(f"libpython{_python_version()}*.so*")):
            _LOGGER.warning(
                "no shared libpython%s in %s: the Python backend stub may load another copy of Python",
                _python_version(),
                libdir,
            )
    candidates += [
        root.parent.parent / "nvidia_pytriton.libs",  # auditwheel's copy of the server's libraries
        root / "external_libs",  # older nvidia-pytriton layouts
        root / "lib",
    ]
    seen: list[str] = []
    for path in candidates:
        if path.is_dir() and str(path) not in seen:
            seen.append(str(path))
    return seen


def _server_env() -> dict[str, str]:
    """The environment the server and its Python stubs run in."""
    env = dict(os.environ)
    ld_path = _library_path()
    if env.get("LD_LIBRARY_PATH"):
        ld_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld_path)
    # Not resolved: a virtual environment's bin/python is a symlink to the base interpreter.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
    return env


def _prepare_backends(workdir: Path) -> Path:
    """A writable backend directory in `workdir`: the wheel's Python backend plus the stub for the running Python."""
    root = _tritonserver_root()
    source = root / "backends" / "python"
    stub = root / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    if not source.is_dir():
        raise ScoringError(f"the Triton Python backend is missing: {source}", hint=_INSTALL_HINT)
    if not stub.is_file():
        available = sorted(p.name for p in (root / "python_backend_stubs").glob("*") if p.is_dir())
        raise ScoringError(
            f"nvidia-pytriton has no Python backend stub for Python {_python_version()} (it has {available})",
            hint="run with one of those Python versions, or install an nvidia-pytriton release built for this one",
        )
    backends = workdir / "backends"
    target = backends / "python"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return backends
