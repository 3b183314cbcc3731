"""The typer app itself: its options, its consoles, and the one place where an error becomes an exit code.

Every command registered on :data:`app` (or on a group made with :func:`group`) runs inside :func:`exits_on_error`:
a :class:`~scoring.errors.ScoringError` it raises is printed as one plain message and ends the process with the
error's exit code (see :func:`scoring.errors.exit_code_for`); ``--debug`` re-raises it with its traceback. Anything
else that escapes is handled by :func:`main`. Commands import what they run lazily: ``scoring --help`` imports no
Spark, MLflow or Triton.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from scoring.errors import ScoringError, exit_code_for

_Command = TypeVar("_Command", bound=Callable[..., Any])

out = Console()
"""Where results go (stdout)."""
err = Console(stderr=True)
"""Where errors and notices go (stderr)."""

_DEBUG = False

SET_HELP = (
    "Override a config key by its dotted path (repeatable), e.g. --set input.version=3 "
    "--set model.uri=models:/churn/2 --set \"input.where=ds = '2026-11-01'\". Values are YAML."
)
"""The help of every command's ``--set``."""


def fail(error: ScoringError) -> NoReturn:
    """Print `error` plainly on stderr and exit with its code; with ``--debug``, raise it instead."""
    if _DEBUG:
        raise error
    err.print(f"[bold red]error:[/bold red] {escape(str(error))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(exit_code_for(error))


def exits_on_error(command: _Command) -> _Command:
    """Wrap a command so that a :class:`~scoring.errors.ScoringError` it raises ends it through :func:`fail`."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ScoringError as e:
            fail(e)

    return run  # type: ignore[return-value]


class _App(typer.Typer):
    """A Typer whose every command runs inside :func:`exits_on_error`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[_Command], _Command]:
        register = super().command(*args, **kwargs)

        def decorator(function: _Command) -> _Command:
            register(exits_on_error(function))
            return function

        return decorator


app = _App(
    help="Batch scoring on the data lake: read a Delta snapshot, score it with an MLflow model inside Spark, "
    "write version-stamped predictions to Delta.\n\nStart with `scoring demo`, then `scoring run conf/jobs/demo.yaml`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def group(name: str, help: str) -> typer.Typer:
    """A group of commands (``scoring <name> ...``), added to :data:`app`; its commands handle errors as the app's."""
    sub = _App(help=help, no_args_is_help=True)
    app.add_typer(sub, name=name)
    return sub


def _setup_logging(verbose: bool) -> None:
    """Quiet by default: scoring's progress, its warnings and everyone's errors. Verbose: scoring's every step, and all
    that Spark (its log4j, Ivy's resolution of the Delta jars) and MLflow print (see scoring.engine.progress.verbose)."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("scoring").setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("scoring.engine.progress").setLevel(
        logging.INFO
    )  # progress lines (outside a terminal) show either way
    logging.getLogger("py4j").setLevel(logging.WARNING)  # a line for every call into the JVM, even with -v
    if not verbose:
        for noisy in ("mlflow", "alembic", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show full tracebacks instead of plain error messages.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Log each step, and show all that Spark, Ivy and MLflow print "
            "(by default: progress, warnings and errors only).",
        ),
    ] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug
    _setup_logging(verbose or debug)


def main() -> None:
    """Run the CLI. A ScoringError is a plain message (:func:`exits_on_error` turns it into its exit code); anything
    else that escapes is a bug or an environment problem: one plain line, exit 1, the traceback only with --debug."""
    try:
        app()
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the one place where every error becomes an exit code
        if _DEBUG:
            raise
        from scoring.errors import from_spark_exception

        found = from_spark_exception(e)
        if found is not None:
            err.print(f"[bold red]error:[/bold red] {escape(str(found))}", highlight=False, soft_wrap=True)
            sys.exit(exit_code_for(found))
        first = (str(e).strip().splitlines() or [""])[0][:500]
        err.print(
            f"[bold red]error:[/bold red] unexpected {type(e).__name__}: {escape(first)}\n"
            "  how to fix: run again with --debug for the full traceback, and report it if it is not your setup",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
