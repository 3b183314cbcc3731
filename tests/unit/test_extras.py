"""The install's extras: pyproject.toml's optional dependencies, the one table of extra -> modules
(scoring.errors.EXTRAS), and require_extra, which names the missing extra instead of failing with an ImportError."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scoring import errors
from scoring.errors import EXIT_CONFIG, EXTRAS, ConfigError, MissingExtraError, exit_code_for, require_extra

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
OPTIONAL = PROJECT["optional-dependencies"]
TOOL_EXTRAS = {"test", "dev"}  # the test tools, and everything at once: no feature of scoring asks for them

ALL_OPTIONAL_MODULES = sorted({module for modules in EXTRAS.values() for module in modules})


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _pretend_missing(monkeypatch, *missing: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in missing else real(name, *args, **kwargs)

    monkeypatch.setattr(errors.importlib.util, "find_spec", find_spec)


def test_require_extra_names_the_extra_and_the_pip_command_when_a_module_of_it_is_missing(monkeypatch):
    _pretend_missing(monkeypatch, "fastapi")
    with pytest.raises(MissingExtraError) as raised:
        require_extra("serve", "scoring serve")
    error = raised.value
    assert error.message == "`scoring serve` needs the `serve` extra: pip install 'scoring[serve]'"
    assert "fastapi" in error.hint and "orjson" not in error.hint
    assert "pip install -c constraints.txt 'scoring[serve]'" in error.hint


def test_a_missing_extra_is_a_config_error_with_the_config_exit_code(monkeypatch):
    _pretend_missing(monkeypatch, "great_expectations")
    with pytest.raises(ConfigError) as raised:
        require_extra("quality", "gates.input")
    assert isinstance(raised.value, errors.Terminal)
    assert exit_code_for(raised.value) == EXIT_CONFIG == 2


def test_a_missing_extra_error_pickles_and_survives_sparks_exception_text(monkeypatch):
    _pretend_missing(monkeypatch, "tritonclient", "pytriton")
    with pytest.raises(MissingExtraError) as raised:
        require_extra("triton", "runtime.backend: triton")
    again = pickle.loads(pickle.dumps(raised.value))
    assert type(again) is MissingExtraError and str(again) == str(raised.value)
    rebuilt = errors.from_spark_exception(RuntimeError(f"Traceback ...\nscoring.errors.MissingExtraError: {again}\n"))
    assert type(rebuilt) is MissingExtraError and rebuilt.message == again.message and rebuilt.hint == again.hint


def test_require_extra_passes_for_every_extra_in_the_full_development_install():
    """This virtualenv is `make setup`'s: `.[dev]`, every extra."""
    for extra in EXTRAS:
        require_extra(extra, f"the {extra} test")
        assert errors.missing_modules(extra) == []


def test_extra_of_names_the_extra_that_installs_a_module():
    assert errors.extra_of("orjson") == "serve"
    assert errors.extra_of("tritonclient.grpc") == "triton"
    assert errors.extra_of("great_expectations.expectations") == "quality"
    assert errors.extra_of("pyspark") is None and errors.extra_of("scoring") is None


def test_an_unknown_extra_is_a_programming_error_not_a_user_error():
    with pytest.raises(ValueError, match="unknown extra 'servee'"):
        require_extra("servee", "scoring serve")


def test_require_extra_imports_nothing():
    code = (
        "import sys\n"
        "from scoring.errors import EXTRAS, require_extra\n"
        "for extra in EXTRAS: require_extra(extra, extra)\n"
        f"print(sorted(m for m in {ALL_OPTIONAL_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


def test_importing_scoring_and_its_cli_imports_no_optional_library():
    code = (
        "import sys\n"
        "import scoring, scoring.cli\n"
        f"print(sorted(m for m in {ALL_OPTIONAL_MODULES + ['starlette', 'skl2onnx']!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "[]", done.stderr


def test_every_feature_extra_of_pyproject_has_its_modules_in_the_table_and_no_more():
    assert set(EXTRAS) == set(OPTIONAL) - TOOL_EXTRAS


def test_each_module_in_the_table_comes_from_its_extra():
    """A module of an extra is installed by a distribution the extra names, or by one of theirs (the `kubernetes`
    client comes with Airflow's Kubernetes provider)."""
    owners = metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        direct = names(OPTIONAL[extra])
        reachable = set(direct)
        for name in direct:
            reachable |= names([r.split(";")[0] for r in metadata.requires(name) or ()])
        for module in modules:
            assert {canonicalize_name(d) for d in owners.get(module, [])} & reachable, (extra, module)


def test_the_core_dependencies_name_no_extras_requirement():
    core = names(PROJECT["dependencies"])
    for extra, requirements in OPTIONAL.items():
        if extra not in TOOL_EXTRAS:
            assert not core & names(requirements), extra
    assert {"pyspark", "delta-spark", "deltalake", "mlflow", "onnxruntime", "pyarrow"} <= core


def test_dev_installs_every_extra_and_the_test_tools():
    (everything,) = OPTIONAL["dev"]
    requirement = Requirement(everything)
    assert requirement.name == PROJECT["name"]
    assert requirement.extras == set(OPTIONAL) - {"dev"}


def test_make_setup_installs_the_dev_extra_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -c constraints.txt -e '.[dev]'" in makefile


def test_the_license_is_an_spdx_expression_and_the_build_floor_supports_it():
    assert PROJECT["license"] == "Apache-2.0"
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (setuptools,) = [Requirement(r) for r in build if Requirement(r).name == "setuptools"]
    assert not setuptools.specifier.contains("76.1") and setuptools.specifier.contains("77.0")
