"""One identity per table: every spelling of a place resolves to one canonical URI before anything compares, guards,
stamps or keys a transaction on it.

A table reference is written many ways: ``lake/scores``, ``./lake/scores/``, ``/abs/lake/scores``,
``file:/abs/lake/scores``, ``file:///abs/lake/scores``, ``/abs/lake/x/../scores``, a symlinked folder,
``s3a://bucket/scores`` and ``s3://bucket/scores``. :func:`table_identity` maps them to one :class:`TableIdentity`,
and :func:`same_table` is the only comparison of two references the project makes: nothing else compares paths as
text.

The rules, in order:

- a local path (no scheme) is taken literally (a ``%`` in a folder name is a ``%``), made absolute against the current
  directory, and resolved through symlinks and ``.``/``..`` (``os.path.realpath``; the part that does not exist yet is
  normalised as text);
- a ``file:`` URI (``file:/x``, ``file:///x``, ``file://localhost/x``) is the local path its percent-decoded path names;
- an object-store URI keeps its bucket (lower-cased, as bucket names are) and its percent-decoded, normalised path;
  ``s3a://`` and ``s3n://`` are ``s3://`` (Hadoop's connectors for one store), ``abfs://`` is ``abfss://``, ``gcs://`` is
  ``gs://``;
- a trailing ``/`` never matters.

The canonical form is a URI: ``file:///abs/path`` or ``s3://bucket/path``, percent-encoded where RFC 3986 asks.

A catalog table name (``db.scores``) is not a place: it resolves to its location through the catalog first
(``scoring.adapters.catalog``), and the location's identity is the table's. Readers without a catalog refuse names.

A place is not yet a table: a table deleted and re-created at the same place is another table. Delta's table id (the
``metaData.id`` of the log) tells them apart; :class:`TableIdentity` carries the place only, and readers that must
notice a re-creation compare the id they read from the log beside it.

Pure: the standard library only (the file system is read for symlinks, never written).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from urllib.parse import quote, unquote, urlsplit

_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3", "abfs": "abfss", "wasb": "wasbs", "gcs": "gs"}
"""Schemes that name the same store as another one (Hadoop's connector names for S3, the TLS forms of Azure's)."""

_SAFE = "/!$&'()*+,;=:@~-._"
"""Characters left as they are in the canonical URI's path (RFC 3986 pchar less the percent sign)."""


@dataclasses.dataclass(frozen=True, order=True)
class TableIdentity:
    """Where a table lives, in one spelling: a URI (``file:///abs/path`` or ``s3://bucket/path``)."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def scheme(self) -> str:
        return self.uri.split(":", 1)[0]

    @property
    def local_path(self) -> str | None:
        """The absolute local path of a local table; None for an object store."""
        if self.scheme != "file":
            return None
        return unquote(self.uri[len("file://") :])

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"


def _has_scheme(ref: str) -> bool:
    head, sep, _ = ref.partition(":")
    return bool(sep) and len(head) > 1 and head.replace("+", "").replace("-", "").replace(".", "").isalnum()


def _local(path: str) -> TableIdentity:
    resolved = os.path.realpath(os.path.abspath(path))
    return TableIdentity("file://" + quote(resolved, safe=_SAFE))


def table_identity(ref: str | os.PathLike[str] | TableIdentity) -> TableIdentity:
    """The canonical identity of the table at `ref` (a path or a URI; see the module's docstring).

    Raises ValueError for an empty reference or a URI without a bucket; never touches a table.
    """
    if isinstance(ref, TableIdentity):
        return ref
    text = os.fspath(ref)
    if not text or not text.strip():
        raise ValueError("a table reference is empty")
    if not _has_scheme(text):
        return _local(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    path = unquote(parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{text}: a file URI names a host ({parts.netloc}); write file:///path for a local table")
        return _local(path or "/")
    scheme = _SCHEME_ALIASES.get(scheme, scheme)
    bucket = parts.netloc.lower()
    if not bucket:
        raise ValueError(f"{text}: a {scheme}:// URI needs a bucket or container (write {scheme}://bucket/path)")
    clean = posixpath.normpath("/" + path.lstrip("/")) if path.strip("/") else ""
    clean = "" if clean == "/" else clean
    return TableIdentity(f"{scheme}://{bucket}{quote(clean, safe=_SAFE)}")


def same_table(a: str | os.PathLike[str] | TableIdentity, b: str | os.PathLike[str] | TableIdentity) -> bool:
    """Whether two references name the same place: the one comparison of table references in the project."""
    return table_identity(a) == table_identity(b)
