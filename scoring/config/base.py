"""What every config section shares: the limits (``MAX_*``), the strict base model, the checked number types, and how
a problem's place is written (``conf/x.yaml, line 3: input.table``, ``--set input.table``)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

MAX_BATCH_ROWS = 2**24
"""Most rows in one Arrow batch (``runtime.batch_rows``) or one Triton request (``runtime.triton.batch_rows``):
16,777,216. Arrow record batches and Spark's ``spark.sql.execution.arrow.maxRecordsPerBatch`` are indexed with 32-bit
ints, and a batch this long of 20 float features is already over 1 GiB per copy; anything larger is a typo."""

MAX_SECONDS = 366 * 86_400
"""Longest duration a job config accepts (``*_s``, ``*_us`` keys): a year. Longer is a typo, and Airflow's and
gRPC's time arithmetic overflows long before infinity."""

MAX_RETRIES = 1_000
"""Most retries a job config accepts (``runtime.triton.max_retries``, ``schedule.retries``)."""

MAX_THREADS = 1_024
"""Most threads, requests in flight or model instances a job config accepts: more than any machine has cores."""

MAX_DEPTH = 32
"""Deepest nesting a job config may have (a real one is about 6 levels deep: ``quality.input.expectations.0.values.0``)."""

MAX_ALIAS_VALUES = 100_000
"""Most values that YAML aliases (``*name``) may repeat in one document, in all; this refuses "billion laughs"
documents, whose few lines expand to billions of values."""

MAX_FILE_BYTES = 1 << 20
"""Largest job config file read: 1 MiB (a real one is a few KiB)."""

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def _show(value: Any, width: int = 60) -> str:
    """`value`'s repr, cut to `width` characters (and never failing, even on an int with 5,000 digits)."""
    try:
        text = repr(value)
    except ValueError:  # int too large for str(): sys.get_int_max_str_digits()
        text = f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= width else f"{text[: width - 3]}..."


def _kind(value: Any) -> str:
    """``3`` -> ``an integer``, ``{}`` -> ``a mapping``: what a value is, in words."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "mapping", list: "list"}
    names |= {dt.date: "date", dt.datetime: "timestamp", bytes: "binary value", type(None): "null"}
    return _a(names.get(type(value), type(value).__name__))


def _a(word: str) -> str:
    return f"{'an' if word[:1] in tuple('aeiou') else 'a'} {word}"


_TAG_KINDS = {"int": "integer", "float": "number", "bool": "boolean", "timestamp": "date", "null": "null"}


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(
            f"expected a number, got {str(value).lower()} (YAML reads true/false/yes/no/on/off as booleans)"
        )
    return value


def _at_most(limit: int, why: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if value is not None and value > limit:
            raise ValueError(f"{_show(value)} is too large: at most {limit:,}; {why}")
        return value

    return AfterValidator(check)


_Int = Annotated[int, BeforeValidator(_number)]
_Float = Annotated[float, BeforeValidator(_number)]
_Seconds = Annotated[_Float, _at_most(MAX_SECONDS, "a duration longer than a year (31,622,400 s) is a typo")]
_Micros = Annotated[_Int, _at_most(MAX_SECONDS * 1_000_000, "a duration longer than a year is a typo")]
_BatchRows = Annotated[
    _Int,
    Field(ge=1),
    _at_most(
        MAX_BATCH_ROWS,
        "Arrow batches are indexed with 32-bit ints and 2**24 rows of 20 float features is already over 1 GiB",
    ),
]
_Threads = Annotated[_Int, Field(ge=1), _at_most(MAX_THREADS, "more than any machine has cores")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _spark_text(value: Any) -> Any:
    """A YAML scalar as Spark spells it: ``true`` -> ``"true"``, ``8`` -> ``"8"``, ``0.6`` -> ``"0.6"``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else value  # a huge int stays an int, and is refused
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value


# -- where a problem is -------------------------------------------------------------------------------------------

_Path = tuple[Any, ...]
_SET = "--set"


def _dotted(path: Iterable[Any]) -> str:
    """``("input", "key", 0)`` -> ``input.key.0``; a part that is not a plain name is quoted (``spark.conf.'a.b'``)."""
    parts = []
    for part in path:
        plain = isinstance(part, int) or (isinstance(part, str) and part and "." not in part and part == part.strip())
        parts.append(str(part) if plain else _show(part, 40))
    return ".".join(parts) or "(top level)"


def _located(source: str, path: _Path = (), line: int | None = None) -> str:
    """``conf/x.yaml, line 3: input.table`` or ``--set input.table``."""
    if source == _SET:
        return f"{_SET} {_dotted(path)}"
    where = f"{source}, line {line}" if line else source
    return f"{where}: {_dotted(path)}" if path else where
