"""The CRD files in ``crds/`` as the one source of the schemas, applied with jsonschema.

The API server validates with the same openAPIV3Schema, so the CLI, the operator and the API server
agree on what is valid. This module adds what the API server also does for structural schemas:
defaults, and reporting (instead of silently pruning) fields the schema does not know.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import yaml

from secprofiles.model.findings import Finding, field_path
from secprofiles.objects import Object

GROUP = "secprofiles.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

SECCOMP_PROFILE = "SeccompProfile"
APPARMOR_PROFILE = "AppArmorProfile"
PROFILE_BINDING = "ProfileBinding"
NODE_PROFILE_STATUS = "NodeProfileStatus"
PROFILE_RECORDING = "ProfileRecording"
RECORDING_REPORT = "RecordingReport"


@cache
def crds() -> dict[str, Object]:
    """Every CRD shipped with the package, by kind."""
    found: dict[str, Object] = {}
    for entry in resources.files("secprofiles").joinpath("data/crds").iterdir():
        if entry.name.endswith(".yaml"):
            crd = yaml.safe_load(entry.read_text(encoding="utf-8"))
            found[crd["spec"]["names"]["kind"]] = crd
    return found


def crd_for(kind: str) -> Object:
    """The CRD of one kind; KeyError for kinds this project does not define."""
    return crds()[kind]


def is_namespaced(kind: str) -> bool:
    """Whether objects of ``kind`` live in a namespace."""
    return bool(crd_for(kind)["spec"]["scope"] == "Namespaced")


def plural(kind: str) -> str:
    """The resource name used in API paths, e.g. ``seccompprofiles``."""
    return str(crd_for(kind)["spec"]["names"]["plural"])


@cache
def openapi_schema(kind: str) -> Object:
    """The served version's openAPIV3Schema of ``kind``."""
    (version,) = [v for v in crd_for(kind)["spec"]["versions"] if v["name"] == VERSION]
    return dict(version["schema"]["openAPIV3Schema"])


def enum_of(kind: str, *path: str) -> list[str]:
    """The ``enum`` at a property path of a schema, e.g. the seccomp actions, in the CRD's order."""
    node = openapi_schema(kind)
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return list(node["enum"])


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# ObjectMeta's fields: anything else in metadata is an unknown field to the API server.
OBJECT_META_FIELDS = frozenset({
    "name", "generateName", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "ownerReferences", "finalizers",
    "managedFields", "selfLink"})


def is_dns1123_label(value: object) -> bool:
    """Namespaces: at most 63 characters of ``[a-z0-9-]``, alphanumeric at both ends (no newline either)."""
    return isinstance(value, str) and len(value) <= 63 and _DNS1123_LABEL.fullmatch(value) is not None


def is_dns1123_subdomain(value: object) -> bool:
    """Object names: at most 253 characters, dot-separated labels."""
    return isinstance(value, str) and len(value) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(value) is not None

# The CRDs' x-kubernetes-validations (CEL) rules, as the API server evaluates them, in Python. A CRD rule
# missing here fails ``cel_rules`` (and its unit test): the model must never accept what the API server refuses.
CEL_EQUIVALENTS: dict[str, Callable[[Any], bool]] = {
    "self.map(r, has(r.names) ? size(r.names) : 1).sum() <= 4096":
        lambda rules: sum(len(r["names"]) if "names" in r else 1 for r in rules) <= 4096,
    "self.all(k, size(k) <= 317)": lambda mapping: all(len(k) <= 317 for k in mapping),
}


@cache
def _validator(kind: str) -> Any:
    # Imported here: the node agent renders profiles but never validates schemas, and stays smaller without it.
    import jsonschema

    schema = openapi_schema(kind)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    # The API server's integers are int64 and never floats (1.0 would reach a node file as 1.0, which the
    # runtimes' JSON decoders refuse for an integer field).
    types = cls.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    formats = jsonschema.FormatChecker([])
    formats.checks("int64")(lambda value: not isinstance(value, int) or INT64_MIN <= value <= INT64_MAX)
    return jsonschema.validators.extend(cls, type_checker=types)(schema, format_checker=formats)


@cache
def cel_rules(kind: str) -> tuple[tuple[list[str | int], str, str], ...]:
    """Every CEL rule of ``kind``'s schema: (schema path, rule, message). Raises if the model lacks one."""
    found: list[tuple[list[str | int], str, str]] = []

    def walk(node: Object, path: list[str | int]) -> None:
        for rule in node.get("x-kubernetes-validations", []):
            if rule["rule"] not in CEL_EQUIVALENTS:
                raise KeyError(f"{kind} {field_path(path)}: CEL rule {rule['rule']!r} has no Python equivalent")
            found.append((path, rule["rule"], rule.get("message", f"failed rule: {rule['rule']}")))
        for name, sub in node.get("properties", {}).items():
            walk(sub, [*path, name])
        if isinstance(node.get("items"), dict):
            walk(node["items"], [*path, 0])
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], [*path, "*"])

    walk(openapi_schema(kind), [])
    return tuple(found)


def _cel_findings(kind: str, obj: Object) -> list[Finding]:
    """The CEL rules, checked only on schema-valid objects (as the API server does)."""
    findings: list[Finding] = []
    for path, rule, message in cel_rules(kind):
        for where, value in _values_at(obj, path, []):
            if not CEL_EQUIVALENTS[rule](value):
                findings.append(Finding(field_path(where), message))
    return findings


def _values_at(value: Any, path: list[str | int], where: list[str | int]) -> list[tuple[list[str | int], Any]]:
    if not path:
        return [(where, value)]
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = enumerate(value) if isinstance(value, list) else iter(())
        return [found for i, item in items for found in _values_at(item, rest, [*where, i])]
    if head == "*":
        entries = value.items() if isinstance(value, dict) else iter(())
        return [found for key, item in entries for found in _values_at(item, rest, [*where, key])]
    if isinstance(value, dict) and head in value:
        return _values_at(value[head], rest, [*where, head])
    return []


def with_defaults(kind: str, obj: Object) -> Object:
    """A copy of ``obj`` with the schema's defaults filled in, as the API server would store it."""
    result = copy.deepcopy(obj)
    _fill_defaults(openapi_schema(kind), result)
    return result


def _fill_defaults(schema: Object, value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _fill_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _fill_defaults(schema["items"], item)


def validate(obj: Object) -> list[Finding]:
    """Check ``obj`` against its kind's CRD schema; one finding per problem, named by field."""
    kind = obj.get("kind")
    if obj.get("apiVersion") != API_VERSION or kind not in crds():
        return [Finding("kind", f"unknown kind {obj.get('apiVersion')}/{kind}; expected {API_VERSION} "
                                f"and one of {', '.join(sorted(crds()))}")]
    findings = [_finding(error) for error in _validator(kind).iter_errors(obj)]
    findings += _metadata_findings(obj, {f.field for f in findings})
    if not findings:
        findings = _cel_findings(kind, obj)
    findings += _unknown_fields(openapi_schema(kind), obj, [])
    return sorted(set(findings))


def _metadata_findings(obj: Object, reported: set[str]) -> list[Finding]:
    """What the API server checks in metadata for every object, beyond the CRD schema."""
    if "metadata" not in obj:  # the API server always sets a name; files must too
        return [Finding("metadata", "required field is missing")]
    meta = obj["metadata"]
    if not isinstance(meta, dict):
        return []  # the schema's type finding
    found = [Finding(field_path(["metadata", key]), "unknown field") for key in meta if key not in OBJECT_META_FIELDS]
    if "name" not in meta:
        found.append(Finding("metadata.name", "required field is missing"))
    elif "metadata.name" not in reported and not is_dns1123_subdomain(meta["name"]):
        found.append(Finding("metadata.name", f"invalid name {_short(meta['name'])}: must be a lowercase RFC 1123 "
                                              "subdomain of at most 253 characters"))
    if "namespace" in meta and not is_dns1123_label(meta["namespace"]):
        found.append(Finding("metadata.namespace", f"invalid namespace {_short(meta['namespace'])}: must be a "
                                                   "lowercase RFC 1123 label of at most 63 characters"))
    for key in ("labels", "annotations"):
        value = meta.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in value.items()):
            found.append(Finding(f"metadata.{key}", "must be a map of strings to strings"))
    return found


def _finding(error: Any) -> Finding:
    path: list[str | int] = list(error.absolute_path)
    keyword, expected = error.validator, error.validator_value
    if keyword == "required":
        missing = next(name for name in expected if name not in error.instance)
        return Finding(field_path([*path, missing]), "required field is missing")
    if keyword in ("oneOf", "anyOf"):
        names = [sub["required"][0] for sub in expected]
        how = "exactly one" if keyword == "oneOf" else "at least one"
        return Finding(field_path(path), f"set {how} of: {', '.join(names)}")
    messages: dict[str, Callable[[], str]] = {
        "enum": lambda: f"unsupported value {error.instance!r}; allowed: {', '.join(map(str, expected))}",
        "type": lambda: f"must be of type {expected}, got {type(error.instance).__name__}",
        "pattern": lambda: f"invalid value {_short(error.instance)}: must match {expected}",
        "maxLength": lambda: f"too long: {len(error.instance)} characters, at most {expected}",
        "minLength": lambda: f"too short: at least {expected} characters",
        "maxItems": lambda: f"too many items: {len(error.instance)}, at most {expected}",
        "minItems": lambda: f"needs at least {expected} item(s)",
        "maxProperties": lambda: f"too many entries: at most {expected}",
        "minimum": lambda: f"{error.instance} is less than the minimum {expected}",
        "maximum": lambda: f"{error.instance} is greater than the maximum {expected}",
        "format": lambda: f"{error.instance} is out of range for {expected} "
                          f"({INT64_MIN} to {INT64_MAX})" if expected == "int64" else error.message,
    }
    message = messages[keyword]() if keyword in messages else error.message
    return Finding(field_path(path), message)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…'"


def _unknown_fields(schema: Object, value: Any, path: list[str | int]) -> list[Finding]:
    """Fields the schema does not declare: the API server would drop them silently."""
    if path == ["metadata"] or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[Finding] = []
    if isinstance(value, dict) and "properties" in schema and "additionalProperties" not in schema:
        for name, sub in value.items():
            if name not in schema["properties"]:
                found.append(Finding(field_path([*path, name]), "unknown field"))
            else:
                found += _unknown_fields(schema["properties"][name], sub, [*path, name])
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name, sub in value.items():
            found += _unknown_fields(schema["additionalProperties"], sub, [*path, name])
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += _unknown_fields(schema["items"], item, [*path, index])
    return found
