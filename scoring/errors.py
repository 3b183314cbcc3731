"""One error hierarchy for everything `scoring` raises on purpose.

Every error says what is wrong and how to fix it. Errors must pickle (they travel from Spark's Python workers back to
the driver) and must survive the trip through Spark's own exception wrapping, which keeps only the text of a worker's
traceback: :func:`from_spark_exception` finds our error in that text and rebuilds it on the driver.

`Transient` and `Terminal` are mixins that retry loops look at: a transient error may succeed when tried again
(a server restarting, a timeout, a lost race for a commit); a terminal one never will (a missing column, an unknown
model). The type decides the exit code, in one place (:func:`exit_code_for`), so a scheduler can tell whether a retry
can help:

==========  =================================================================================================
exit code   meaning
==========  =================================================================================================
0           success (the run committed, or had already committed under the same run id)
1           terminal failure: bad input, model or output; retrying the same run will fail the same way
2           config error: the job config or a ``--set`` is wrong, or the install lacks the extra a command needs
            (nothing was read or written)
75          transient failure (``EX_TEMPFAIL``): a server did not answer, a concurrent writer won the commit;
            retrying the same run may succeed
==========  =================================================================================================

Every failure leaves the output and quarantine tables as they were.
"""

from __future__ import annotations

import importlib.util
import re

EXIT_OK = 0
EXIT_TERMINAL = 1
EXIT_CONFIG = 2
EXIT_TRANSIENT = 75
"""``EX_TEMPFAIL`` from sysexits.h: the conventional "try again later"."""


class ScoringError(Exception):
    """Root of every error `scoring` raises on purpose. The message is meant for the user, as is."""

    exit_code = EXIT_TERMINAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  how to fix: {hint}")

    def __reduce__(self):  # keep `hint` across pickling (Spark workers -> driver)
        return (_rebuild, (type(self), self.message, self.hint))


def _rebuild(cls: type[ScoringError], message: str, hint: str | None) -> ScoringError:
    return cls(message, hint=hint)


class Transient:
    """Mixin: trying again may succeed. Retry loops (the Triton client, the Airflow ``score`` task) retry these only."""

    exit_code = EXIT_TRANSIENT


class Terminal:
    """Mixin: trying again will fail the same way."""


def is_transient(error: BaseException) -> bool:
    """Whether trying again may help: the error's type says so (never its text)."""
    return isinstance(error, Transient)


def exit_code_for(error: BaseException) -> int:
    """The process exit code for `error` (see the table in this module's docstring)."""
    if isinstance(error, ConfigError):
        return EXIT_CONFIG
    if isinstance(error, Transient):
        return EXIT_TRANSIENT
    return EXIT_TERMINAL


class ConfigError(ScoringError, Terminal):
    """The job config (a YAML file or a --set override) is wrong: unknown key, wrong type, missing key."""

    exit_code = EXIT_CONFIG


class MissingExtraError(ConfigError):
    """A command or a config asks for something the install does not have: an optional extra (``pip install
    'scoring[serve]'``) is missing. Raised by :func:`require_extra` before anything is read or written."""


EXTRAS: dict[str, tuple[str, ...]] = {
    "triton": ("tritonclient", "pytriton"),
    "serve": ("fastapi", "uvicorn", "orjson", "redis", "httpx", "prometheus_client"),
    "stream": ("confluent_kafka", "prometheus_client"),
    "airflow": ("airflow", "kubernetes"),
    "quality": ("great_expectations",),
    "notebooks": ("papermill", "ipykernel", "matplotlib", "tqdm"),
    "demo": ("sklearn", "skl2onnx"),
}
"""Each optional extra of pyproject.toml (``[project.optional-dependencies]``) -> the top-level modules it installs
that `scoring` imports. Top-level names only: looking one up finds it on the path without importing anything."""


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` (a key of :data:`EXTRAS`) that are not installed, found without importing them."""
    try:
        modules = EXTRAS[extra]
    except KeyError:
        raise ValueError(f"unknown extra {extra!r}: choose from {sorted(EXTRAS)}") from None
    return [module for module in modules if importlib.util.find_spec(module) is None]


def extra_of(module: str) -> str | None:
    """The extra that installs `module` (a dotted name: its top-level package counts), or None for any other module.
    Lets a last-resort handler turn an unforeseen ``ModuleNotFoundError`` into the extra to install."""
    top = module.partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of `extra` is installed. `feature` names what needs it,
    as a user would write it (``scoring serve``, ``runtime.backend: triton``). Nothing is imported."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtraError(
            f"`{feature}` needs the `{extra}` extra: pip install 'scoring[{extra}]'",
            hint=f"not installed: {', '.join(missing)}; with the pinned versions: "
            f"pip install -c constraints.txt 'scoring[{extra}]' (or `make setup`, which installs every extra)",
        )


class InputError(ScoringError, Terminal):
    """The input table or its columns are not what the job needs (missing table, column, wrong dtype, empty)."""


class InvalidRowsError(InputError):
    """Rows whose features are null or NaN, with `input.on_invalid_rows: fail`."""


class UnwritableRowsError(InputError):
    """Selected rows the output table cannot take (a partition value too long to be a path, a key that does not fit
    the output column's type), found before anything was written; a batch run without a quarantine table refuses
    them (see :mod:`scoring.core.writable`)."""


class ModelError(ScoringError, Terminal):
    """The model cannot be resolved, loaded, or does not accept the job's inputs."""


class OutputValidationError(ScoringError, Terminal):
    """What a model returned does not match the batch it was given (row count, dtype, shape)."""


class OutputError(ScoringError, Terminal):
    """The output table cannot be written as configured (e.g. a schema or partitioning clash)."""


class CheckpointError(ScoringError, Terminal):
    """A stream's checkpoint cannot be used: a file of it is corrupt, was edited by hand, or is missing. The message
    names the file; restarting on the same checkpoint fails the same way."""


class QualityError(ScoringError, Terminal):
    """A data-quality gate failed: an expectation on the input or the output did not hold."""


class BackendUnavailableError(Transient, ScoringError):
    """A model server did not answer in time; trying again may succeed."""


class ConflictError(Transient, OutputError):
    """Another writer committed to the same table first (a concurrent run, two first runs creating the table).
    Nothing of this run was committed; running it again scores against the winner's table."""


_ALL: dict[str, type[ScoringError]] = {}


def _register() -> None:
    stack: list[type[ScoringError]] = [ScoringError]
    while stack:
        cls = stack.pop()
        _ALL[cls.__name__] = cls
        stack.extend(cls.__subclasses__())


# A worker's error reaches the driver as the text of its traceback, whose last lines read
# "scoring.errors.InputError: <message>\n  how to fix: <hint>". Find the last such error in that text.
_WORKER_ERROR = re.compile(
    r"scoring\.errors\.(?P<cls>[A-Za-z]+): (?P<message>.*?)(?:\n  how to fix: (?P<hint>[^\n]*))?(?:\n|$)",
)


def from_spark_exception(exc: BaseException) -> ScoringError | None:
    """The `ScoringError` a Spark worker raised, rebuilt from Spark's wrapped exception; None if there is none."""
    if not _ALL:
        _register()
    found = None
    for match in _WORKER_ERROR.finditer(str(exc)):
        found = match
    if found is None:
        return None
    cls = _ALL.get(found["cls"], ScoringError)
    return cls(found["message"].strip(), hint=found["hint"])
