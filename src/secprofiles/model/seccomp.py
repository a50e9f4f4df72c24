"""SeccompProfile: semantic checks, base-profile resolution and rendering to the node file.

Pure logic: the caller supplies a lookup for other profiles (the CLI from files, the operator from
its cache), so the same code decides validity everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from secprofiles.model import keys, schema, syscalls
from secprofiles.model.findings import Finding, InvalidProfileError
from secprofiles.model.libseccomp_filter import Refusal
from secprofiles.objects import Object

BUNDLED_PREFIX = "bundled/"
MAX_BASE_DEPTH = 10
_ERRNO_ACTIONS = {"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"}

Spec = dict[str, Any]
# (namespace, name) -> spec of that SeccompProfile, or None when there is none.
ProfileLookup = Callable[[str, str], Spec | None]


@dataclass(frozen=True)
class Rendered:
    """The exact bytes a node needs, with their hash and where they go."""

    content: bytes
    content_hash: str
    localhost_profile: str  # what pods put in securityContext.seccompProfile.localhostProfile


def content_hash(content: bytes) -> str:
    """The version pin of rendered bytes: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


def check_spec(spec: Spec) -> list[Finding]:
    """Semantic checks the schema cannot express (run after schema validation)."""
    findings: list[Finding] = []
    architectures = spec.get("architectures", [])
    if spec.get("defaultAction") == "SCMP_ACT_NOTIFY":
        findings.append(Finding("spec.defaultAction", _NOTIFY))
    if "defaultErrnoRet" in spec and spec.get("defaultAction") not in _ERRNO_ACTIONS:
        findings.append(Finding("spec.defaultErrnoRet",
                                "only valid with defaultAction SCMP_ACT_ERRNO or SCMP_ACT_TRACE"))
    plain: dict[tuple[str, tuple[tuple[int, int, int, str], ...]], tuple[str, int | None, int]] = {}
    for index, rule in enumerate(spec.get("syscalls", [])):
        where = f"spec.syscalls[{index}]"
        action = rule.get("action")
        if action == "SCMP_ACT_NOTIFY":
            findings.append(Finding(f"{where}.action", _NOTIFY))
        if "errnoRet" in rule and action not in _ERRNO_ACTIONS:
            findings.append(Finding(f"{where}.errnoRet", "only valid with action SCMP_ACT_ERRNO or SCMP_ACT_TRACE"))
        names, names_field = _rule_names(rule)
        for position, name in enumerate(names):
            field = f"{where}.{names_field}" + (f"[{position}]" if names_field == "names" else "")
            if not syscalls.is_known(name, architectures):
                on = ", ".join(architectures) if architectures else "any architecture libseccomp knows"
                findings.append(Finding(field, f"unknown syscall {name!r}: not a syscall on {on}"))
            # libseccomp refuses (EEXIST) a second rule for a syscall with the same conditions and another
            # action: runc would fail every container using the profile.
            effect = (action, rule.get("errnoRet"), index)
            earlier = plain.setdefault((name, _args_key(rule.get("args", []))), effect)
            if earlier[:2] != effect[:2]:
                same = " with the same argument conditions" if rule.get("args") else ""
                findings.append(Finding(field, f"syscall {name!r}{same} already has action {earlier[0]} in "
                                               f"spec.syscalls[{earlier[2]}]; one syscall, one action"))
    return findings


_NOTIFY = "SCMP_ACT_NOTIFY needs a seccomp agent (listenerPath), which secprofiles does not configure"


def _rule_names(rule: Spec) -> tuple[list[str], str]:
    if "names" in rule:
        return list(rule["names"]), "names"
    return ([rule["name"]] if "name" in rule else []), "name"


def refusal_finding(spec: Spec, refusal: Refusal) -> Finding:
    """The finding for a filter libseccomp refused: the profile's own rule for that syscall when it has one,
    else its base reference (the rule came from a base), else the rules as a whole."""
    for index, rule in enumerate(spec.get("syscalls", [])):
        names, names_field = _rule_names(rule)
        if refusal.syscall in names:
            position = f"[{names.index(refusal.syscall)}]" if names_field == "names" else ""
            return Finding(f"spec.syscalls[{index}].{names_field}{position}", refusal.reason)
    if refusal.field is not None:
        return Finding(f"spec.{refusal.field}", refusal.reason)
    if refusal.syscall is not None and spec.get("baseProfileName"):
        return Finding("spec.baseProfileName", f"syscall {refusal.syscall!r} (from the base): {refusal.reason}")
    return Finding("spec.syscalls", refusal.reason)


def validate(obj: Object) -> list[Finding]:
    """Schema and semantic findings for one SeccompProfile object (base references not followed)."""
    findings = schema.validate(obj)
    if findings:
        return findings
    return check_spec(obj["spec"])


def walk_bases(namespace: str, name: str, spec: Spec, lookup: ProfileLookup) -> Iterator[tuple[str, Spec | None]]:
    """The base chain of ``spec`` as it is, checking nothing: (base name, its spec or None when not found), from
    ``spec``'s base toward the root. Ends after a base that is not found, before a name seen earlier (a cycle),
    and after ``MAX_BASE_DEPTH + 1`` bases (deep enough for ``resolve_chain`` to tell the chain is too deep)."""
    seen = {name}
    current: Spec | None = spec
    for _ in range(MAX_BASE_DEPTH + 1):
        base = current.get("baseProfileName") if current is not None else None
        if not base or base in seen:
            return
        seen.add(base)
        current = lookup(namespace, base)
        yield base, current


def resolve_chain(namespace: str, name: str, spec: Spec, lookup: ProfileLookup) -> list[Spec]:
    """The specs from the root base down to ``spec`` itself; raises InvalidProfileError on bad references."""
    chain = [spec]
    seen = [name]
    for base, found in walk_bases(namespace, name, spec, lookup):
        if len(chain) > MAX_BASE_DEPTH:
            chain_text = " -> ".join(seen)
            raise InvalidProfileError([Finding("spec.baseProfileName",
                                               f"base profile chain deeper than {MAX_BASE_DEPTH}: {chain_text}")])
        if found is None:
            where = "bundled with secprofiles" if base.startswith(BUNDLED_PREFIX) else f"in namespace {namespace!r}"
            raise InvalidProfileError([Finding("spec.baseProfileName",
                                               f"base profile {base!r} (via {seen[-1]!r}) not found {where}")])
        # a base that is not schema-valid (a file next to this one) is reported, not read
        base_obj = {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE,
                    "metadata": {"name": base.removeprefix(BUNDLED_PREFIX), "namespace": namespace}, "spec": found}
        if invalid := schema.validate(base_obj):
            detail = "; ".join(str(p) for p in invalid)
            raise InvalidProfileError([Finding("spec.baseProfileName", f"base profile {base!r} is invalid: {detail}")])
        if problems := check_spec(found):
            detail = "; ".join(str(p) for p in problems)
            raise InvalidProfileError([Finding("spec.baseProfileName", f"base profile {base!r} is invalid: {detail}")])
        chain.append(found)
        seen.append(base)
    if last := chain[-1].get("baseProfileName"):  # the walk stopped before a name it had seen: a cycle
        cycle = " -> ".join([*seen, last])
        raise InvalidProfileError([Finding("spec.baseProfileName", f"base profiles form a cycle: {cycle}")])
    chain.reverse()
    return chain


def render(namespace: str, name: str, spec: Spec, lookup: ProfileLookup) -> Rendered:
    """Render a valid SeccompProfile to its node file: deterministic OCI JSON, ``names`` only."""
    problems = check_spec(spec)
    if problems:
        raise InvalidProfileError(problems)
    chain = resolve_chain(namespace, name, spec, lookup)
    document = _merge(chain)
    if hang := _libseccomp_hang(document):
        raise InvalidProfileError([Finding("spec.syscalls", hang)])
    content = (json.dumps(document, indent=2) + "\n").encode()
    return Rendered(content, content_hash(content), keys.localhost_profile(namespace, name))


_RuleKey = tuple[str, int | None, tuple[tuple[int, int, int, str], ...]]


def _merge(chain: list[Spec]) -> dict[str, Any]:
    """Merge base-first: a later layer's rule for a syscall replaces every earlier rule for it."""
    leaf = chain[-1]
    groups: dict[_RuleKey, set[str]] = {}
    for layer in chain:
        layer_groups: dict[_RuleKey, set[str]] = {}
        for rule in layer.get("syscalls", []):
            key = (rule["action"], rule.get("errnoRet"), _args_key(rule.get("args", [])))
            layer_groups.setdefault(key, set()).update(_rule_names(rule)[0])
        # A later layer's rule replaces earlier rules for the same syscall: all of them when it has no
        # argument conditions, those with the same conditions otherwise (two would make libseccomp fail).
        overridden = {(n, key[2]) for key, names in layer_groups.items() for n in names}
        replaced_everywhere = {n for n, args in overridden if not args}
        for key, names in groups.items():
            names -= replaced_everywhere | {n for n, args in overridden if args == key[2]}
        for key, names in layer_groups.items():
            groups.setdefault(key, set()).update(names)

    document: dict[str, Any] = {"defaultAction": leaf["defaultAction"]}
    if "defaultErrnoRet" in leaf:
        document["defaultErrnoRet"] = leaf["defaultErrnoRet"]
    with_arches = [layer["architectures"] for layer in chain if layer.get("architectures")]
    architectures: list[str] = with_arches[-1] if with_arches else []
    if architectures:
        document["architectures"] = sorted(set(architectures))
    flags = sorted({flag for layer in chain for flag in layer.get("flags", [])})
    if flags:
        document["flags"] = flags
    order = {action: i for i, action in enumerate(schema.enum_of(schema.SECCOMP_PROFILE, "spec", "defaultAction"))}
    rules = [(key, sorted(names)) for key, names in groups.items() if names]
    rules.sort(key=lambda r: (order[r[0][0]], -1 if r[0][1] is None else r[0][1], r[0][2], r[1]))
    document["syscalls"] = [_rule_document(key, names) for key, names in rules]
    return document


def _libseccomp_hang(document: dict[str, Any]) -> str | None:
    """libseccomp 2.5.4 (what runc links on current distributions) never returns from adding a second rule for a
    syscall whose conditions repeat one of the first rule's comparisons other than equality and differ elsewhere
    (found by the fuzz tests): the container runtime would hang creating every container using the profile."""
    seen: dict[tuple[str, tuple[int, int, int, str]], tuple[tuple[int, int, int, str], ...]] = {}
    for rule in document.get("syscalls", []):
        args = _args_key(rule.get("args", []))
        for name in rule["names"]:
            for condition in args:
                if condition[3] == "SCMP_CMP_EQ":
                    continue
                earlier = seen.setdefault((name, condition), args)
                if earlier != args:
                    index, value, _, op = condition
                    return (f"two rules for syscall {name!r} repeat the condition (arg {index} {op} {value}) with "
                            "different other conditions; libseccomp 2.5 hangs building such a filter: merge them or "
                            "use SCMP_CMP_EQ")
    return None


def _args_key(args: Iterable[Spec]) -> tuple[tuple[int, int, int, str], ...]:
    return tuple(sorted((a["index"], a.get("value", 0), a.get("valueTwo", 0), a["op"]) for a in args))


def _rule_document(key: _RuleKey, names: list[str]) -> dict[str, Any]:
    action, errno_ret, args = key
    rule: dict[str, Any] = {"names": names, "action": action}
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    if args:
        rule["args"] = [{"index": i, "value": v, "valueTwo": v2, "op": op} for i, v, v2, op in args]
    return rule
