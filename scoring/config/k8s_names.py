"""The API server's rules for names and keys, and the check of every name and key in rendered manifests.

The rules are those of Kubernetes' ``k8s.io/apimachinery/pkg/util/validation`` (v0.37), the functions the API server
calls on each object: a check here answers as ``IsDNS1123Label``, ``IsDNS1123Subdomain``, ``IsDNS1035Label``,
``IsConfigMapKey``, ``IsValidLabelValue`` and ``IsQualifiedName`` do. ``tests/unit/test_k8s_names.py`` holds them to
apimachinery's own answers (a small Go program calling those functions, ``tests/k8s_names/``). The OpenAPI schemas
the manifests are also validated against do not check any of this: a bad namespace or ConfigMap key passes them and
is refused only by the API server, at ``kubectl apply``.

Each check returns the problems (empty when the value is valid). Lengths count UTF-8 bytes, as Go's do.

:func:`manifest_problems` walks rendered objects and lists every name and key that breaks its rule, with the config
key it came from; :func:`scoring.deploy.kubernetes.render` refuses to return such manifests.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
DNS1035_LABEL_MAX = 63
LABEL_VALUE_MAX = 63
CONFIG_MAP_KEY_MAX = 253

_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(_LABEL)
_DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_DNS1035_LABEL = re.compile("[a-z]([-a-z0-9]*[a-z0-9])?")
_CONFIG_MAP_KEY = re.compile("[-._a-zA-Z0-9]+")
_LABEL_KEY_NAME = re.compile("([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _too_long(value: str, limit: int) -> list[str]:
    return [f"must be no more than {limit} characters"] if len(value.encode()) > limit else []


def dns1123_label(value: str) -> list[str]:
    """A DNS-1123 label (namespaces, container and volume names): ``[a-z0-9]([-a-z0-9]*[a-z0-9])?``, at most 63."""
    problems = _too_long(value, DNS1123_LABEL_MAX)
    if not _DNS1123_LABEL.fullmatch(value):
        problems.append(
            "must not contain dots"
            if _DNS1123_SUBDOMAIN.fullmatch(value)
            else "must be lower-case letters, digits and '-', starting and ending with a letter or digit"
        )
    return problems


def dns1123_subdomain(value: str) -> list[str]:
    """A DNS-1123 subdomain (ConfigMap, Secret, ServiceAccount, PriorityClass, Pod names): dot-separated DNS-1123
    labels, at most 253 in all."""
    problems = _too_long(value, DNS1123_SUBDOMAIN_MAX)
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        problems.append(
            "must be lower-case letters, digits, '-' and '.', each dot-separated part starting and ending with a "
            "letter or digit"
        )
    return problems


def dns1035_label(value: str) -> list[str]:
    """A DNS-1035 label (Service names; spark-operator's webhook requires it of a SparkApplication's name):
    a DNS-1123 label that starts with a letter."""
    problems = _too_long(value, DNS1035_LABEL_MAX)
    if not _DNS1035_LABEL.fullmatch(value):
        problems.append(
            "must be lower-case letters, digits and '-', starting with a letter and ending with a letter or digit"
        )
    return problems


def config_map_key(value: str) -> list[str]:
    """A key of a ConfigMap's or a Secret's data: ``[-._a-zA-Z0-9]+``, at most 253, not ``.``, not starting ``..``."""
    problems = _too_long(value, CONFIG_MAP_KEY_MAX)
    if not _CONFIG_MAP_KEY.fullmatch(value):
        problems.append("must be letters, digits, '-', '_' and '.' (no spaces, slashes or other characters)")
    if value == ".":
        problems.append("must not be '.'")
    elif value.startswith(".."):
        problems.append("must not be '..'" if value == ".." else "must not start with '..'")
    return problems


def label_value(value: str) -> list[str]:
    """A label's value: empty, or letters, digits, ``-``, ``_``, ``.`` starting and ending alphanumeric; at most 63."""
    problems = _too_long(value, LABEL_VALUE_MAX)
    if value and not _LABEL_KEY_NAME.fullmatch(value):
        problems.append(
            "must be empty or letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return problems


def qualified_name(value: str) -> list[str]:
    """A label or annotation key, a node selector or toleration key: ``[prefix/]name``, the prefix a DNS-1123
    subdomain, the name as a label value but not empty."""
    parts = value.split("/")
    if len(parts) > 2:
        return ["must be a name with at most one '/' (an optional DNS subdomain prefix, e.g. example.com/name)"]
    problems = []
    if len(parts) == 2:
        prefix = parts[0]
        problems += (
            ["prefix part must not be empty"] if not prefix else [f"prefix part {p}" for p in dns1123_subdomain(prefix)]
        )
    name = parts[-1]
    if not name:
        problems.append("name part must not be empty")
    elif len(name.encode()) > LABEL_VALUE_MAX:
        problems.append(f"name part must be no more than {LABEL_VALUE_MAX} characters")
    if not _LABEL_KEY_NAME.fullmatch(name):
        problems.append(
            "name part must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )
    return problems


RULES: dict[str, Callable[[str], list[str]]] = {
    "dns1123_label": dns1123_label,
    "dns1123_subdomain": dns1123_subdomain,
    "dns1035_label": dns1035_label,
    "config_map_key": config_map_key,
    "label_value": label_value,
    "qualified_name": qualified_name,
}
"""Each rule by the name ``tests/k8s_names/main.go`` knows it by."""

_RULE_WORDS = {
    "dns1123_label": "a DNS-1123 label",
    "dns1123_subdomain": "a DNS-1123 subdomain",
    "dns1035_label": "a DNS-1035 label",
    "config_map_key": "a ConfigMap/Secret key",
    "label_value": "a label value",
    "qualified_name": "a qualified name (label key)",
}

DRIVER_POD_SUFFIX = "-driver"
"""spark-operator names the driver pod ``<app>-driver`` (kubeflow/spark-operator ``pkg/util/sparkapplication.go``).
Its other derived names (``<app>-ui-svc``, ``<app>-ui-ingress``) are shortened with a hash by the operator itself."""


# -- the names in rendered objects ------------------------------------------------------------------------------------


def manifest_names(objects: list[Mapping[str, Any]]) -> Iterator[tuple[str, str, str, str]]:
    """``(where, value, rule, config key)`` for every name and key in `objects` (a ConfigMap and a SparkApplication
    as :func:`scoring.deploy.kubernetes.render` builds them), including the names spark-operator derives from them."""
    for obj in objects:
        kind = obj.get("kind", "?")
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        at = f"{kind} {name}"
        if kind == "ConfigMap":
            yield f"{at}: metadata.name", name, "dns1123_subdomain", "name (the job name)"
            for key in obj.get("data") or {}:
                yield f"{at}: data key", key, "config_map_key", "the config file's name"
        else:
            yield f"{at}: metadata.name", name, "dns1035_label", "name (the job name)"
            yield f"{at}: the driver pod's name", name + DRIVER_POD_SUFFIX, "dns1123_label", "name (the job name)"
        yield (
            f"{at}: metadata.namespace",
            str(meta.get("namespace", "")),
            "dns1123_label",
            ("kubernetes.namespace (else schedule.namespace)"),
        )
        yield from _meta(at, meta, "metadata")
        spec = obj.get("spec")
        if kind != "SparkApplication" or not isinstance(spec, Mapping):
            continue
        for secret in spec.get("imagePullSecrets") or []:
            yield f"{at}: spec.imagePullSecrets", secret, "dns1123_subdomain", "kubernetes.image_pull_secrets"
        for role in ("driver", "executor"):
            part = spec.get(role) or {}
            if "serviceAccount" in part:
                yield (
                    f"{at}: spec.{role}.serviceAccount",
                    part["serviceAccount"],
                    "dns1123_subdomain",
                    ("kubernetes.service_account"),
                )
            yield from _labels(f"{at}: spec.{role}.labels", part.get("labels") or {}, "name (the job name)")
            template = part.get("template") or {}
            yield from _meta(at, template.get("metadata") or {}, f"spec.{role}.template.metadata")
            yield from _pod_spec(f"{at}: spec.{role}.template.spec", template.get("spec") or {}, role)


def _labels(at: str, labels: Mapping[str, Any], origin: str) -> Iterator[tuple[str, str, str, str]]:
    for key, value in labels.items():
        yield f"{at} key", key, "qualified_name", origin
        yield f"{at}[{key}]", str(value), "label_value", origin


def _meta(at: str, meta: Mapping[str, Any], path: str) -> Iterator[tuple[str, str, str, str]]:
    yield from _labels(f"{at}: {path}.labels", meta.get("labels") or {}, "name (the job name)")
    for key in meta.get("annotations") or {}:
        yield f"{at}: {path}.annotations key", key, "qualified_name", "(fixed by the renderer)"


def _pod_spec(at: str, spec: Mapping[str, Any], role: str) -> Iterator[tuple[str, str, str, str]]:
    pod = f"kubernetes.{role}"
    if "priorityClassName" in spec:
        yield f"{at}.priorityClassName", spec["priorityClassName"], "dns1123_subdomain", f"{pod}.priority_class"
    for key, value in (spec.get("nodeSelector") or {}).items():
        yield f"{at}.nodeSelector key", key, "qualified_name", f"{pod}.node_selector"
        yield f"{at}.nodeSelector[{key}]", str(value), "label_value", f"{pod}.node_selector"
    for i, toleration in enumerate(spec.get("tolerations") or []):
        if toleration.get("key"):
            yield f"{at}.tolerations[{i}].key", toleration["key"], "qualified_name", f"{pod}.tolerations.{i}.key"
        if toleration.get("value") is not None:
            yield f"{at}.tolerations[{i}].value", toleration["value"], "label_value", f"{pod}.tolerations.{i}.value"
    for volume in spec.get("volumes") or []:
        yield f"{at}.volumes name", volume["name"], "dns1123_label", "(fixed by the renderer)"
        if "configMap" in volume:
            yield (
                f"{at}.volumes configMap.name",
                volume["configMap"]["name"],
                "dns1123_subdomain",
                "name (the job name)",
            )
    for kind in ("initContainers", "containers"):
        for container in spec.get(kind) or []:
            where = f"{at}.{kind}[{container.get('name')}]"
            yield f"{where}.name", container.get("name", ""), "dns1123_label", "(fixed by the renderer)"
            for mount in container.get("volumeMounts") or []:
                yield f"{where}.volumeMounts name", mount["name"], "dns1123_label", "(fixed by the renderer)"
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    origin = f"kubernetes.secret_env.{env['name']}"
                    yield (
                        f"{where}.env[{env['name']}] secretKeyRef.name",
                        ref["name"],
                        "dns1123_subdomain",
                        (f"{origin}.secret"),
                    )
                    yield f"{where}.env[{env['name']}] secretKeyRef.key", ref["key"], "config_map_key", f"{origin}.key"
            for source in container.get("envFrom") or []:
                if "secretRef" in source:
                    yield (
                        f"{where}.envFrom secretRef.name",
                        source["secretRef"]["name"],
                        "dns1123_subdomain",
                        ("kubernetes.env_from_secrets"),
                    )


def manifest_problems(objects: list[Mapping[str, Any]]) -> list[str]:
    """One line per name or key in `objects` that the API server (or spark-operator) would refuse, saying where,
    which rule, why, and the config key to change; each distinct problem once."""
    lines: dict[str, None] = {}
    for where, value, rule, origin in manifest_names(objects):
        problems = RULES[rule](value)
        if problems:
            lines[f"{where}: {value!r} is not {_RULE_WORDS[rule]} ({'; '.join(problems)}); it comes from {origin}"] = (
                None
            )
    return list(lines)
