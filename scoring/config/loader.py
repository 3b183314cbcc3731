"""The strict loader: a job config's YAML read (:mod:`scoring.config.strict_yaml`), ``${VAR}`` expanded, ``key=value``
overrides applied, and the tree validated once into a :class:`~scoring.config.job.JobConfig`; a pydantic
``ValidationError`` becomes one :class:`~scoring.errors.ConfigError` naming the file, the line, the dotted key and,
for an unknown key, the key it was probably meant to be. See :mod:`scoring.config` for what is refused."""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from scoring.config.base import _SET, _dotted, _kind, _located, _Path, _show
from scoring.config.job import JobConfig
from scoring.config.strict_yaml import _load_yaml, _read
from scoring.errors import ConfigError

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
