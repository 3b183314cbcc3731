"""Why a streaming query stopped, in words: the failures that are not the user's data (a corrupt checkpoint file, a
source table deleted and created again, files removed by VACUUM, a Kafka topic deleted) translated into a
:class:`~scoring.errors.ScoringError` that names the file, table or topic and says how to recover, instead of
Spark's wrapped exception (which the CLI could only report as an unexpected error).

A cause is recognised by what Spark and Delta classify it as: the error class of each exception in the Java cause
chain (``MALFORMED_LOG_FILE``, ``DIFFERENT_DELTA_TABLE_READ_BY_STREAMING_SOURCE``, ``FAILED_READ_FILE.FILE_NOT_EXIST``,
``KAFKA_DATA_LOSS.*``, ...) and its Java class (``ChecksumException``, ``FileNotFoundException``,
``UnknownTopicOrPartitionException``, Jackson's parse errors); the message text is used only to name the file. Any
failure not recognised that way is checked against the checkpoint itself: when one of the files Spark reads at a
restart (``metadata``, the newest ``offsets/N`` and ``commits/N``) is unreadable or malformed, that is the cause.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from scoring.errors import CheckpointError, InputError, ScoringError

_LOGGER = logging.getLogger(__name__)

_CAUSES_MAX = 30
"""Most exceptions followed down a Java cause chain."""
_NEWEST_LOG_FILES = 3
"""Of each checkpoint log (offsets, commits), how many of the newest files are checked: a restart reads the last
ones only."""

_CHECKPOINT_CLASSES = ("MALFORMED_LOG_FILE",)
_CHECKPOINT_JAVA = (
    "org.apache.hadoop.fs.ChecksumException",
    "com.fasterxml.jackson.core.JsonParseException",
    "com.fasterxml.jackson.core.io.JsonEOFException",
    "com.fasterxml.jackson.databind.exc.MismatchedInputException",
    "org.json4s.ParserUtil$ParseException",
    "org.json4s.MappingException",
)
_RECREATED_CLASSES = ("DIFFERENT_DELTA_TABLE_READ_BY_STREAMING_SOURCE",)
_MISSING_FILE_CLASSES = (
    "FAILED_READ_FILE.FILE_NOT_EXIST",
    "DELTA_FILE_NOT_FOUND",
    "DELTA_FILE_NOT_FOUND_DETAILED",
    "DELTA_LOG_FILE_NOT_FOUND",
    "DELTA_LOG_FILE_NOT_FOUND_FOR_STREAMING_SOURCE",
    "DELTA_VERSIONS_NOT_CONTIGUOUS",
    "DELTA_STATE_RECOVER_ERROR",
)
_MISSING_FILE_JAVA = ("java.io.FileNotFoundException",)
_KAFKA_LOSS_PREFIX = "KAFKA_DATA_LOSS"
_KAFKA_GONE_JAVA = ("org.apache.kafka.common.errors.UnknownTopicOrPartitionException",)


@dataclass(frozen=True)
class Cause:
    """One exception of a Java cause chain (or the Python exception itself)."""

    java_class: str
    error_class: str
    message: str


def causes(error: BaseException) -> list[Cause]:
    """The exceptions behind `error`: the Python one, then its Java exception and that one's causes, each with its
    Java class and Spark error class (empty where there is none)."""
    out = [Cause(type(error).__name__, _python_error_class(error), str(error))]
    java = getattr(error, "_origin", None) or getattr(error, "java_exception", None)
    seen = 0
    while java is not None and seen < _CAUSES_MAX:
        seen += 1
        try:
            name = str(java.getClass().getName())
            message = str(java.getMessage() or "")
        except Exception:  # noqa: BLE001 - a gateway going away: keep what we have
            break
        error_class = ""
        for getter in ("getCondition", "getErrorClass"):
            try:
                error_class = str(getattr(java, getter)() or "")
                break
            except Exception:  # noqa: BLE001 - not a SparkThrowable (or one from before getCondition)
                continue
        out.append(Cause(name, error_class, message))
        try:
            nxt = java.getCause()
        except Exception:  # noqa: BLE001
            break
        if nxt is None or nxt == java:
            break
        java = nxt
    return out


def _python_error_class(error: BaseException) -> str:
    try:
        return str(error.getCondition() or "")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not one of pyspark's captured exceptions
        return ""


def _classes(chain: list[Cause]) -> Iterator[str]:
    for cause in chain:
        if cause.error_class:
            yield cause.error_class
        # a Python worker's or foreachBatch's failure keeps an inner error only as text: its bracketed class
        yield from re.findall(r"\[([A-Z][A-Z0-9_]+(?:\.[A-Z0-9_]+)?)\]", cause.message)


def _has_class(chain: list[Cause], wanted: tuple[str, ...], prefix: str | None = None) -> bool:
    for name in _classes(chain):
        if name in wanted or name.split(".")[0] in wanted or (prefix and name.startswith(prefix)):
            return True
    return False


def _has_java(chain: list[Cause], wanted: tuple[str, ...]) -> bool:
    return any(c.java_class in wanted or any(w in c.message for w in wanted) for c in chain)


def _first_line(chain: list[Cause], predicate) -> str:
    for cause in reversed(chain):
        if predicate(cause) and cause.message:
            return cause.message.strip().splitlines()[0][:400]
    return (chain[-1].message.strip().splitlines() or [""])[0][:400]


# -- the translation ----------------------------------------------------------------------------------------------


def translate(error: BaseException, config, spark) -> ScoringError | None:
    """`error` (a failed query's, a micro-batch's or the start's) as a ScoringError naming its cause and the way to
    recover; None when the cause is none of those this module knows (the checkpoint looked intact)."""
    if isinstance(error, ScoringError):
        return error
    stream = config.stream
    chain = causes(error)
    found = _recreated_source(chain, config)
    found = found or _kafka_topic_gone(chain, config)
    found = found or _missing_files(chain, config)
    if found is not None:
        return found
    checkpoint_like = _has_class(chain, _CHECKPOINT_CLASSES) or _has_java(chain, _CHECKPOINT_JAVA)
    if spark is not None and stream is not None:
        bad = corrupt_checkpoint_file(spark, stream.checkpoint)
        if bad is not None:
            return checkpoint_error(*bad)
    if checkpoint_like and stream is not None:
        named = re.search(
            r"(?:log file|file) (\S+/(?:offsets|commits|sources|metadata)\S*)", "\n".join(c.message for c in chain)
        )
        where = named.group(1).rstrip(".") if named else stream.checkpoint
        return checkpoint_error(where, _first_line(chain, lambda c: True))
    return None


def checkpoint_error(path: str, why: str) -> CheckpointError:
    return CheckpointError(
        f"stream.checkpoint: the checkpoint file {path} is corrupt or was edited by hand ({why}): the query cannot "
        "tell which micro-batches it has done",
        hint="restore the file (or the whole checkpoint folder) from a backup; or start a new checkpoint with a new "
        "output.table, which scores the source from its start (a new checkpoint on the same output is refused, as "
        "it would score the source again into it). Do not delete the file: a micro-batch it records may already be "
        "in the output",
    )


def _recreated_source(chain: list[Cause], config) -> ScoringError | None:
    if not _has_class(chain, _RECREATED_CLASSES):
        return None
    return recreated_source_error(
        config.input.table,
        config.stream.checkpoint,
        _first_line(chain, lambda c: "DIFFERENT_DELTA_TABLE" in c.error_class + c.message),
    )


def recreated_source_error(table: str, checkpoint: str, detail: str) -> InputError:
    """The source at `table` is not the table the checkpoint's offsets belong to (Delta's table id changed)."""
    return InputError(
        f"input.table: {table} was deleted and created again at the same place since the checkpoint {checkpoint} "
        f"read it (its Delta table id changed: {detail}): the checkpoint's offsets belong to the old table, and "
        "going on would skip or repeat rows",
        hint="to score the new table, start a new stream.checkpoint with a new output.table; to go on with the old "
        "one, restore the old table (its _delta_log) at that path",
    )


def _kafka_topic_gone(chain: list[Cause], config) -> ScoringError | None:
    stream = config.stream
    if stream is None or stream.source != "kafka" or stream.kafka is None:
        return None
    lost = _has_class(chain, (), prefix=_KAFKA_LOSS_PREFIX)
    gone = _has_java(chain, _KAFKA_GONE_JAVA)
    if not (lost or gone):
        return None
    topic = stream.kafka.topic
    what = _first_line(chain, lambda c: c.error_class.startswith(_KAFKA_LOSS_PREFIX) or "Topic" in c.message)
    return InputError(
        f"stream.kafka.topic: topic {topic!r} lost records this stream had not read yet: it was deleted (or deleted "
        f"and created again), or its records expired before they were read ({what}). The query stopped rather than "
        "skip them; every micro-batch before this one is in the output exactly once",
        hint=f"once {topic!r} exists again, start a new stream.checkpoint with a new output.table (it reads from "
        "stream.kafka.starting_offsets). Do not set stream.kafka.options.failOnDataLoss: 'false' to get past this: "
        "the checkpoint holds the old topic's offsets, and a re-created topic's records below them would be skipped "
        "without a word",
    )


def _missing_files(chain: list[Cause], config) -> ScoringError | None:
    if not (_has_class(chain, _MISSING_FILE_CLASSES) or _has_java(chain, _MISSING_FILE_JAVA)):
        return None
    text = "\n".join(c.message for c in chain)
    stream = config.stream
    named = re.search(
        r"(?:file|File|path) (\S+?)(?:\.|,)?(?:\s|$)",
        _first_line(
            chain, lambda c: "not exist" in c.message or "FileNotFound" in c.java_class or "NOT_FOUND" in c.error_class
        ),
    )
    path = named.group(1) if named else None
    key, table = _which_table(text, config)
    if key == "stream.checkpoint":
        return checkpoint_error(path or stream.checkpoint, "a file it lists is missing")
    recovery = (
        "start a new stream.checkpoint with a new output.table (it scores the source's current snapshot)"
        if key == "input.table"
        else "restore the missing files, or score into a new output.table"
    )
    return InputError(
        f"{key}: files of {table} that this stream needed are gone"
        + (f" ({path})" if path else "")
        + ": removed by VACUUM (or by hand) before the stream read them; the micro-batches before are in the "
        "output exactly once",
        hint=f"{recovery}; to keep it from happening, keep removed files longer than the stream may lag behind "
        "(the table property delta.deletedFileRetentionDuration, and no VACUUM ... RETAIN shorter than that) and "
        "keep delta.logRetentionDuration longer too",
    )


def _which_table(text: str, config) -> tuple[str, str]:
    """Which of the query's tables a message names: (config key, table)."""
    from scoring.core.identity import table_identity

    candidates = [("stream.checkpoint", config.stream.checkpoint)]
    if config.stream.source == "delta":
        candidates.append(("input.table", config.input.table))
    candidates += [("output.table", config.output.table), ("quality.quarantine_table", config.quarantine_table)]
    for key, table in candidates:
        if not table:
            continue
        spellings = {str(table).rstrip("/")}
        try:
            ident = table_identity(table)
            spellings |= {str(getattr(ident, "local_path", "") or "").rstrip("/"), str(ident).rstrip("/")}
        except (ValueError, TypeError):
            pass
        if any(s and s in text for s in spellings):
            return key, table
    return (
        ("input.table", config.input.table)
        if config.stream.source == "delta"
        else ("output.table", config.output.table)
    )


# -- the checkpoint -----------------------------------------------------------------------------------------------


def corrupt_checkpoint_file(spark, checkpoint: str) -> tuple[str, str] | None:
    """The first file of `checkpoint` that a restart reads and that is unreadable or malformed, with why; None when
    they all look right (or there is no checkpoint yet). Reads ``metadata`` and the newest few ``offsets/N`` and
    ``commits/N`` through Hadoop's file system (as Spark does: a file edited without its ``.crc`` fails there too)."""
    from scoring.adapters.spark import read_text

    root = checkpoint.rstrip("/")
    try:
        listing = {name: _numbered(spark, f"{root}/{name}") for name in ("offsets", "commits")}
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint folder
        return root, f"its folder cannot be listed: {_short(e)}"
    files = [f"{root}/metadata"] + [
        f"{root}/{name}/{n}" for name, numbers in listing.items() for n in numbers[-_NEWEST_LOG_FILES:]
    ]
    for path in files:
        try:
            text = read_text(spark, path)
        except Exception as e:  # noqa: BLE001 - ChecksumException, an IO error: the file cannot be read as written
            return path, f"cannot be read: {_short(e)}"
        if text is None:
            continue
        why = _malformed(path, text)
        if why is not None:
            return path, why
    return None


def _numbered(spark, folder: str) -> list[int]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(folder)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        return []
    names = [str(status.getPath().getName()) for status in fs.listStatus(path)]
    return sorted(int(n) for n in names if n.isdigit())


def _malformed(path: str, text: str) -> str | None:
    """Why `text` is not a well-formed checkpoint file of its kind, or None."""
    lines = [line for line in text.splitlines() if line.strip()]
    if path.endswith("/metadata"):
        try:
            meta = json.loads(text)
        except ValueError as e:
            return f"not JSON: {e}"
        return None if isinstance(meta, dict) and isinstance(meta.get("id"), str) else "no query id in it"
    if not lines or not re.fullmatch(r"v\d+", lines[0].strip()):
        return f"the first line should be a log version such as v1, not {lines[0][:40] if lines else 'empty'!r}"
    body = lines[1:]
    if "/commits/" in path:
        body = body[:1]
    if not body:
        return "it holds no entry after the version line"
    for line in body:
        if line.strip() == "-":  # a source without an offset yet
            continue
        try:
            json.loads(line)
        except ValueError as e:
            return f"line {lines.index(line) + 1} is not JSON: {e}"
    return None


def _short(error: BaseException) -> str:
    text = str(getattr(error, "java_exception", None) or error)
    return (text.strip().splitlines() or [type(error).__name__])[0][:300]
