"""The environment of a job's pods on Kubernetes: where each ``${VAR}`` of its config comes from, never its value.

A job config may read the environment (``${VAR}``, ``${VAR:-default}``). Rendered for Kubernetes, nothing is expanded
where the manifests are written: the ConfigMap holds the file as written, ``sparkConf`` holds ``spark.conf`` as written
(``${VAR}`` included: the driver's entry point, :mod:`scoring.deploy.spark_submit`, expands it from its own environment before
it builds the Spark session), and the pods get each variable from a Secret (``kubernetes.secret_env``: a
``secretKeyRef``; ``kubernetes.env_from_secrets``: ``envFrom``) or from ``kubernetes.env``. So:

- :func:`references` lists every ``${VAR}`` the pods will expand (in the file and in the ``--set`` overrides);
- :func:`problems` says which of them nothing in the pod spec provides (a render error: the driver would stop on it),
  which sit in a Spark setting read before scoring's code runs (spark-submit starts the driver's JVM with the text
  ``${VAR}``), and which ``kubernetes.env`` value uses a default (Kubernetes has none);
- :func:`container_env` writes ``env`` / ``envFrom``, with ``kubernetes.env``'s ``${VAR}`` turned into Kubernetes'
  own ``$(VAR)`` (which the kubelet expands from the Secrets' variables, defined first) and every other ``$`` escaped.

With ``kubernetes.env_from_secrets`` the Secrets' keys are unknown when rendering: a variable not given otherwise is
then assumed to come from one of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml

from scoring.config import _ENV, KubernetesConfig, parse_overrides
from scoring.errors import ConfigError

READ_BEFORE_THE_DRIVER_RUNS = (
    "spark.driver.extra",
    "spark.driver.defaultJavaOptions",
    "spark.driver.memory",
    "spark.jars",
    "spark.files",
    "spark.archives",
    "spark.submit.",
    "spark.pyspark.",
    "spark.kubernetes.driver",
    "spark.kubernetes.authenticate",
    "spark.kubernetes.submission",
    "spark.kubernetes.file.upload",
    "spark.kubernetes.container.image",
    "spark.kubernetes.namespace",
)
"""Prefixes of Spark settings that spark-submit (in the operator, or starting the driver's JVM) uses before scoring's
code runs in the driver: a ``${VAR}`` there would be used as the text ``${VAR}``, so it is refused."""


@dataclasses.dataclass(frozen=True)
class Reference:
    """One ``${VAR}`` (or ``${VAR:-default}``) the pods expand."""

    key: str
    """Where: the dotted config key (``spark.conf.spark.hadoop.fs.s3a.secret.key``), with ``--set`` before it when an
    override holds it."""
    name: str
    default: str | None

    @property
    def spark_key(self) -> str | None:
        """The Spark setting it is in, when it is in ``spark.conf``."""
        parts = self.key.removeprefix("--set ").split(".", 2)
        return parts[2] if parts[:2] == ["spark", "conf"] and len(parts) == 3 else None

    @property
    def in_kubernetes_env(self) -> bool:
        return self.key.removeprefix("--set ").startswith("kubernetes.env.")


def _walk(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, (*path, str(key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, str(i)))


def _in_text(text: str) -> Iterator[tuple[str, str | None]]:
    for m in _ENV.finditer(text):
        if not m["escape"] and m["name"]:
            yield m["name"], m["default"]


def references(config_text: str, overrides: Sequence[str] = ()) -> list[Reference]:
    """Every ``${VAR}`` in `config_text` (a job config the loader accepted) and in `overrides` (``key=value``)."""
    found = []
    for path, text in _walk(yaml.safe_load(config_text) or {}, ()):
        found += [Reference(".".join(path), name, default) for name, default in _in_text(text)]
    for dotted, value in parse_overrides(overrides).items():
        for path, text in _walk(value, ()):
            key = ".".join((dotted, *path))
            found += [Reference(f"--set {key}", name, default) for name, default in _in_text(text)]
    return found


def provided(k8s: KubernetesConfig) -> set[str]:
    """The variables the pod spec names: ``kubernetes.env`` and ``kubernetes.secret_env``."""
    return set(k8s.env) | set(k8s.secret_env)


def problems(refs: Sequence[Reference], k8s: KubernetesConfig) -> list[str]:
    """What would break in the pods, one line each (empty when nothing would)."""
    given = provided(k8s)
    out: dict[str, None] = {}
    for ref in refs:
        spark_key = ref.spark_key
        if spark_key is not None and spark_key.startswith(READ_BEFORE_THE_DRIVER_RUNS):
            out[
                f"{ref.key}: ${{{ref.name}}} in {spark_key}, which spark-submit reads before scoring's code runs in "
                "the driver, so the text ${...} itself would be used (write the value, or set it another way)"
            ] = None
        if ref.in_kubernetes_env and ref.default is not None:
            out[
                f"{ref.key}: ${{{ref.name}:-...}}: kubernetes.env values are expanded by Kubernetes, which has no "
                f"defaults (write ${{{ref.name}}} and provide {ref.name}, or write the value)"
            ] = None
        if ref.default is None and ref.name not in given and not k8s.env_from_secrets:
            out[
                f"{ref.key}: ${{{ref.name}}} is not provided to the pods: add kubernetes.secret_env.{ref.name}: "
                f"{{secret: <name>, key: <key>}} (or a Secret holding {ref.name} to kubernetes.env_from_secrets, or "
                f"kubernetes.env.{ref.name} if it is no secret), or write ${{{ref.name}:-default}}"
            ] = None
    return list(out)


def check(refs: Sequence[Reference], k8s: KubernetesConfig, job: str) -> None:
    """Raise a :class:`ConfigError` listing :func:`problems`, if any."""
    found = problems(refs, k8s)
    if found:
        raise ConfigError(
            f"job {job!r}: the environment variables its config reads would not reach the pods as meant:\n"
            + "\n".join(f"  {line}" for line in found),
            hint="the pods expand ${VAR} from their own environment; docs/kubernetes.md, 'Credentials'",
        )


def _kubernetes_text(value: str, key: str) -> tuple[str, list[str]]:
    """`value` in Kubernetes' own syntax (``$(VAR)``, ``$$`` for ``$``) and the variables it refers to."""
    out, names, pos = [], [], 0
    for m in _ENV.finditer(value):
        out.append(value[pos : m.start()].replace("$", "$$"))
        if m["escape"]:
            out.append(m[0][1:].replace("$", "$$"))
        elif m["name"] and m["default"] is None:
            out.append(f"$({m['name']})")
            names.append(m["name"])
        else:  # refused by the loader (a bad ${) or by problems() (a default); kept as text
            out.append(m[0].replace("$", "$$"))
        pos = m.end()
    out.append(value[pos:].replace("$", "$$"))
    return "".join(out), names


def container_env(k8s: KubernetesConfig) -> dict[str, Any]:
    """The ``env`` / ``envFrom`` of every container that runs scoring code.

    Plain values that refer to no variable first, then the Secret references, then the plain values that refer to
    variables, each after what it refers to (Kubernetes expands ``$(VAR)`` from the variables defined before it)."""
    plain: dict[str, tuple[str, list[str]]] = {
        name: _kubernetes_text(value, f"kubernetes.env.{name}") for name, value in k8s.env.items()
    }
    env: list[dict[str, Any]] = [{"name": n, "value": plain[n][0]} for n in sorted(plain) if not plain[n][1]]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for name, ref in sorted(k8s.secret_env.items())
    ]
    pending = sorted(n for n in plain if plain[n][1])
    while pending:
        ready = [n for n in pending if not set(plain[n][1]) & set(pending)]
        if not ready:
            raise ConfigError(
                f"kubernetes.env: {', '.join(pending)} refer to each other (or to themselves): Kubernetes could not "
                "expand them",
                hint="write the value of one of them out",
            )
        env += [{"name": n, "value": plain[n][0]} for n in ready]
        pending = [n for n in pending if n not in ready]
    env_from = [{"secretRef": {"name": name}} for name in k8s.env_from_secrets]
    return {**({"env": env} if env else {}), **({"envFrom": env_from} if env_from else {})}
