"""Reading a job config's YAML strictly: a duplicate key, a non-text key, an exotic tag, deep nesting and alias bombs
are refused with the dotted key and the line; a file too large, unreadable or not UTF-8 is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from scoring.config.base import (
    _SET,
    _TAG_KINDS,
    MAX_ALIAS_VALUES,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    _a,
    _located,
    _Path,
    _show,
)
from scoring.errors import ConfigError

_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = frozenset(_TAG + t for t in ("null", "bool", "int", "float", "str", "seq", "map", "timestamp"))
_MERGE, _VALUE, _STR = _TAG + "merge", _TAG + "value", _TAG + "str"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, minus its silent surprises: a duplicate key, a non-text key, an exotic tag, deep nesting,
    and alias bombs are refused with the dotted key (and, in a file, the line) instead of being read."""

    def __init__(self, text: str, source: str, prefix: _Path) -> None:
        super().__init__(text)
        self.name = source  # what PyYAML's own messages call the stream
        self._source = source
        self._prefix = prefix
        self._depth = 0
        self._paths: dict[int, _Path] = {}
        self._checked: set[int] = set()
        self.lines: dict[_Path, int] = {}
        """Line of each key (and list item) by its dotted path, for messages about the validated tree."""

    def _where(self, node: Node, path: _Path | None = None) -> str:
        path = self._paths.get(id(node), self._prefix) if path is None else path
        return _located(self._source, path, None if self._source == _SET else node.start_mark.line + 1)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                line = None if self._source == _SET else mark.line + 1
                raise ConfigError(
                    f"{_located(self._source, self._prefix, line)}: nested more than {MAX_DEPTH} levels deep",
                    hint="a job config is a few levels deep; look for a stray bracket or indentation",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def survey(self, root: Node) -> None:
        """Check the composed document before building any Python value from it (see the class docstring)."""
        sizes: dict[int, int] = {}
        heights: dict[int, int] = {}
        open_: set[int] = set()

        def visit(node: Node, path: _Path, depth: int) -> int:
            ident = id(node)
            if ident in open_:
                raise ConfigError(
                    f"{self._where(node, path)}: an alias refers to a mapping or list that contains it",
                    hint="a job config is a tree: remove the recursive alias",
                )
            if ident in sizes:  # an alias to a node seen before: count what it repeats
                if depth + heights[ident] - 1 > MAX_DEPTH:
                    raise ConfigError(
                        f"{self._where(node, path)}: aliases nest this document more than {MAX_DEPTH} levels deep",
                        hint="a job config is a few levels deep; write the values out instead of aliasing them",
                    )
                return sizes[ident]
            self._paths[ident] = path
            if node.tag not in _PLAIN_TAGS and node.tag not in (_MERGE, _VALUE):
                tag = node.tag.replace(_TAG, "!!")
                raise ConfigError(
                    f"{self._where(node)}: the tag {_show(tag)} is not allowed in a job config",
                    hint="write plain YAML values; to make a value text, quote it ('...') rather than tag it",
                )
            children: list[tuple[Node, _Path]] = []
            if isinstance(node, SequenceNode):
                for i, child in enumerate(node.value):
                    children.append((child, (*path, i)))
                    self.lines.setdefault((*path, i), child.start_mark.line + 1)
            elif isinstance(node, MappingNode):
                for key_node, value_node in node.value:
                    if not isinstance(key_node, ScalarNode):
                        kind = "mapping" if isinstance(key_node, MappingNode) else "list"
                        raise ConfigError(
                            f"{self._where(key_node, path)}: a key is a {kind}; keys are names",
                            hint="write the key as plain text (a complex key, ? or [..]:, has no meaning here)",
                        )
                    if key_node.tag == _MERGE:
                        children.append((value_node, path))
                        continue
                    if key_node.tag not in (_STR, _VALUE):
                        kind = key_node.tag.replace(_TAG, "")
                        raise ConfigError(
                            f"{self._where(key_node, path)}: the key {_show(key_node.value)} is read by YAML as "
                            f"{_a(_TAG_KINDS.get(kind, kind))}, not a name",
                            hint=f"keys are names: quote it ('{key_node.value}') if it is one",
                        )
                    children.append((value_node, (*path, key_node.value)))
                    self.lines.setdefault((*path, key_node.value), key_node.start_mark.line + 1)
            open_.add(ident)
            size, height = 1, 1
            for child, child_path in children:
                size += visit(child, child_path, depth + 1)
                height = max(height, 1 + heights[id(child)])
            open_.discard(ident)
            sizes[ident], heights[ident] = size, height
            return size

        total = visit(root, self._prefix, 1)
        repeated = total - len(sizes)
        if repeated > MAX_ALIAS_VALUES:
            raise ConfigError(
                f"{_located(self._source, self._prefix)}: aliases (*name) repeat {repeated:,} values, more than "
                f"{MAX_ALIAS_VALUES:,}",
                hint="a job config is small: write the values out, or alias fewer of them",
            )

    def _check_keys(self, node: MappingNode) -> None:
        """Refuse a key given twice in `node`, before merge keys (``<<``) fold other mappings into it."""
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                path = (*self._paths.get(id(node), self._prefix), key_node.value)
                first = seen[key_node.value]
                lines = f", on lines {first} and {line}" if line != first else f" on line {line}"
                lines = "" if self._source == _SET else lines
                raise ConfigError(
                    f"{_located(self._source, path)}: given twice{lines}",
                    hint="keep one of them (YAML alone would silently keep the last)",
                )
            seen[key_node.value] = line

    def flatten_mapping(self, node: MappingNode) -> None:
        self._check_keys(node)
        super().flatten_mapping(node)

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._check_keys(node)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # 2026-13-45, an int of 5,000 digits: not YAML errors in PyYAML
            kind = node.tag.replace(_TAG, "")
            raise ConfigError(
                f"{self._where(node)}: YAML cannot read {_show(node.value)} as {_a(_TAG_KINDS.get(kind, kind))}: {e}",
                hint="fix the value, or quote it to make it text",
            ) from None


_StrictLoader.add_constructor(_MERGE, _StrictLoader.construct_yaml_str)  # `<<` as a value is just text
_StrictLoader.add_constructor(_VALUE, _StrictLoader.construct_yaml_str)  # so is `=`


def _load_yaml(text: str, *, source: str, prefix: _Path = (), label: str, hint: str) -> tuple[Any, dict[_Path, int]]:
    """Parse one YAML document strictly (see :class:`_StrictLoader`): its value, and the line of each key."""
    loader = None
    try:
        loader = _StrictLoader(text, source, prefix)  # reading starts here: a NUL byte is refused at once
        node = loader.get_single_node()
        if node is None:
            return None, {}
        loader.survey(node)
        return loader.construct_document(node), loader.lines
    except yaml.YAMLError as e:
        if "'\\t'" in str(e):
            hint = "indent with spaces: YAML does not allow tabs for indentation"
        raise ConfigError(f"{label} is not valid YAML: {e}", hint=hint) from None
    except RecursionError:
        raise ConfigError(f"{label} is nested too deeply to read", hint="a job config is a few levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


def _read(path: Path) -> str:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file", hint="pass the path of a YAML job config, e.g. conf/jobs/demo.yaml"
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path}: is a folder, not a config file",
            hint="pass the path of a YAML job config, e.g. conf/jobs/demo.yaml",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{path}: cannot be read (permission denied)", hint="make the file readable by this user (chmod u+r)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror or e}", hint="pass a readable YAML file") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_FILE_BYTES:,} bytes; a job config is a few KiB",
            hint="is this the right file?",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise ConfigError(
            f"{path}, line {line}, column {column}: not UTF-8 text (byte {data[e.start]:#04x})",
            hint="save the file as UTF-8",
        ) from None
