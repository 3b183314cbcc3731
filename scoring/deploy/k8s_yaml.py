"""The manifests as YAML files (``kubectl apply -f`` takes them as written). Re-exported by
:mod:`scoring.deploy.kubernetes`."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from scoring.errors import ConfigError


class Rendered(Protocol):
    """What :func:`write` needs of one job's manifests (:class:`scoring.deploy.kubernetes.Manifests`)."""

    name: str

    def files(self) -> dict[str, str]: ...


class _Dumper(yaml.SafeDumper):
    """Block scalars for multi-line strings (the config file in the ConfigMap reads as it was written); no YAML
    anchors and aliases, so that every object reads whole."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """A manifest as YAML, keys in the order written (``kubectl apply -f`` takes it as is)."""
    return yaml.dump(dict(manifest), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def write(rendered: Iterable[Rendered], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write each job's manifests into `out_dir` (created); two jobs of one name are refused."""
    rendered = list(rendered)
    names = [item.name for item in rendered]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"several jobs render to the name(s) {', '.join(twice)}", hint="give each job its own name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for item in rendered:
        for file_name, text in item.files().items():
            path = out / file_name
            path.write_text(text)
            written.append(path)
    return written
