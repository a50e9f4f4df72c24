"""AppArmorProfile: policy checks and rendering to the text a node loads.

A policy may define exactly one profile, named exactly like the object, and nothing that could touch
other profiles or the host: no hats or child profiles, no transitions or change_profile to other
profiles, no unconfined execution, no attachment paths, no includes outside the standard
abstractions/tunables/abi. These checks are lexical and deliberately strict; the AppArmor parser
then double-checks syntax and the names the text defines (see ``apparmor_parser``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from secprofiles.model import schema
from secprofiles.model.findings import Finding
from secprofiles.model.seccomp import content_hash
from secprofiles.objects import Object

MAX_POLICY_BYTES = 65536
# Profiles that belong to the host or the container runtimes: never defined through secprofiles.
RESERVED_NAMES = frozenset({"unconfined", "docker-default", "cri-containerd.apparmor.d", "crio-default", "podman",
                            "runc", "crun", "buildah", "lxc-default"})
RESERVED_PREFIXES = ("cri-containerd", "docker-", "crio-", "containers-default", "lxc-", "snap.", "snap-")
_SAFE_FLAGS = frozenset({"attach_disconnected", "no_attach_disconnected", "mediate_deleted", "delegate_deleted",
                         "chroot_relative", "namespace_relative", "chroot_attach", "chroot_no_attach"})
_DEFAULT_FLAGS = "attach_disconnected,mediate_deleted"

_INCLUDE = re.compile(r'^#?\s*include(?:\s+if\s+exists)?\s*(?P<target><[^>]*>|"[^"]*"|(?<=\s)\S+)\s*$')
# What the parser's lexer takes for an include (no space needed before '<' or '"'): never a mere comment here.
_INCLUDE_KEYWORD = re.compile(r'^(#include|include)(\s|<|"|$)')
_INCLUDE_TARGET = re.compile(r"^<(abstractions|tunables|abi)/[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*>$")
_ABI = re.compile(r"^abi\s+(?P<target><[^>]*>|\S+)\s*,$")
_VARIABLE = re.compile(r"^@\{[A-Za-z0-9_]+\}\s*\+?=")
_PROFILE = re.compile(
    r'^profile\s+(?P<name>"[^"]*"|\S+)(?P<attach>\s+(?!flags\b)[^\s{]+)?'
    r"(?:\s+flags\s*=\s*\((?P<flags>[^)]*)\))?\s*\{$"
)
_PERMS = re.compile(r"^[rwaklmixPpCcUu]+$")


@dataclass(frozen=True)
class Rendered:
    """The policy text a node loads, its hash, and the kernel profile name."""

    content: bytes
    content_hash: str
    profile_name: str
    complain: bool

    @property
    def localhost_profile(self) -> str:
        """What pods put in ``appArmorProfile.localhostProfile`` (annotation: ``localhost/<name>``)."""
        return self.profile_name


def check_name(name: str) -> list[Finding]:
    """Reject names of host and runtime profiles: loading them would replace host policy."""
    if name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES):
        return [Finding("metadata.name", f"{name!r} is the name of a host or container-runtime profile; "
                                         "choose another name")]
    return []


def check_policy(name: str, policy: str, mode: str = "enforce") -> list[Finding]:
    """Lexical checks of a raw policy; every finding names ``spec.policy`` and the line."""
    field = "spec.policy"
    if len(policy.encode()) > MAX_POLICY_BYTES:
        return [Finding(field, f"policy is {len(policy.encode())} bytes; the limit is {MAX_POLICY_BYTES}")]
    findings: list[Finding] = []
    for lineno, line in enumerate(policy.split("\n"), 1):
        controls = [c for c in line if _is_control(c)]
        if controls:
            findings.append(_at(lineno, f"control character {controls[0]!r} is not allowed"))
    if findings:
        return findings

    profiles: list[tuple[int, str]] = []
    depth = 0
    for lineno, raw in enumerate(policy.split("\n"), 1):
        line = _strip_comment(raw).strip()
        if not line:
            continue

        include = _INCLUDE.match(line)
        if include or _INCLUDE_KEYWORD.match(line):
            target = include["target"] if include else line
            if not _INCLUDE_TARGET.match(target) or ".." in target:
                findings.append(_at(lineno, f"include {_clip(target)} is not allowed; "
                                            "only <abstractions/…>, <tunables/…> and <abi/…>"))
            continue
        if abi := _ABI.match(line):
            if not _INCLUDE_TARGET.match(abi["target"]) or not abi["target"].startswith("<abi/"):
                findings.append(_at(lineno, f"abi {abi['target']} is not allowed; only <abi/…>"))
            continue
        if depth == 0:
            if _VARIABLE.match(line):
                continue
            header = _PROFILE.match(line)
            if header is None:
                what = "hats" if line.startswith(("^", "hat ")) else "statement"
                findings.append(_at(lineno, f"unexpected top-level {what} {_clip(line)!r}; "
                                            f"define one 'profile {name} {{ … }}'"))
                if line.endswith("{"):
                    depth += 1
                continue
            findings.extend(_check_header(header, name, mode, lineno))
            profiles.append((lineno, header["name"].strip('"')))
            depth = 1
            continue
        if line == "}":
            depth -= 1
            continue
        if line.endswith("{") or line.startswith(("^", "hat ", "profile ")):
            findings.append(_at(lineno, "hats and child profiles are not allowed"))
            depth += 1 if line.endswith("{") else 0
            continue
        if depth > 1:
            continue
        findings.extend(_at(lineno, message) for message in _check_rule(line, name))
    if depth != 0:
        findings.append(Finding(field, "unbalanced braces: a '{' is never closed"))
    if not profiles:
        findings.append(Finding(field, f"defines no profile; expected 'profile {name} {{ … }}'"))
    elif len(profiles) > 1:
        extra = ", ".join(f"{n!r} (line {at})" for at, n in profiles[1:])
        findings.append(Finding(field, f"defines {len(profiles)} profiles; only one is allowed (extra: {extra})"))
    return findings


def _at(lineno: int, message: str) -> Finding:
    return Finding("spec.policy", f"line {lineno}: {message}")


def _is_control(char: str) -> bool:
    """C0 (but tab), DEL, C1 and the Unicode line separators: the parser and this lexer could split lines
    differently around them."""
    code = ord(char)
    return (code < 32 and char != "\t") or 127 <= code <= 159 or char in "\u2028\u2029"


def _strip_comment(line: str) -> str:
    """The line without its comment. '#' starts one outside double quotes (the parser reads a quoted '#' as
    part of a path), except in an include statement, which keeps its '#'."""
    stripped = line.strip()
    before_comment = stripped.split(" #")[0].strip()
    if _INCLUDE_KEYWORD.match(stripped) or _INCLUDE.match(before_comment):
        return before_comment
    quoted = escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _check_header(header: re.Match[str], name: str, mode: str, lineno: int) -> list[Finding]:
    field = "spec.policy"
    found: list[Finding] = []
    defined = header["name"].strip('"')
    if defined != name:
        found.append(Finding(field, f"line {lineno}: profile is named {defined!r}; it must be named exactly "
                                    f"like the object, {name!r}"))
    if header["attach"]:
        found.append(Finding(field, f"line {lineno}: attachment {header['attach'].strip()!r} is not allowed: it "
                                    "would confine host programs; pods select the profile by name"))
    for flag in filter(None, (f.strip() for f in (header["flags"] or "").split(","))):
        if flag in ("complain", "enforce"):
            if flag != mode:
                found.append(Finding(field, f"line {lineno}: flag {flag!r} contradicts spec.mode {mode!r}; "
                                            "set the mode in spec.mode only"))
        elif flag not in _SAFE_FLAGS:
            found.append(Finding(field, f"line {lineno}: profile flag {flag!r} is not allowed"))
    return found


def _check_rule(line: str, name: str) -> list[str]:
    # Token by token, so a rule split over lines cannot hide its exec mode; '->' is a token even unspaced.
    words = [w.rstrip(",") for w in line.replace("->", " -> ").split()]
    if "change_profile" in words:
        return ["change_profile is not allowed: it lets the workload leave this profile"]
    if "pivot_root" in words and "->" in words:
        target = words[words.index("->") + 1].strip('"') if words[-1] != "->" else None
        if target != name:
            return [f"pivot_root to profile {target!r} is not allowed: it lets the workload leave this profile"]
    for position, word in enumerate(words):
        if not _PERMS.match(word) or "x" not in word:
            continue
        if "u" in word.lower():
            return [f"unconfined execution ({word}) is not allowed"]
        if any(p in word for p in "pPcC"):
            arrow = words[position + 1:position + 3]
            target = arrow[1].strip('"') if len(arrow) == 2 and arrow[0] == "->" else None
            if target != name:
                to = f"to {target!r}" if target else "to the profile matching the program"
                return [f"exec transition {word} {to} is not allowed; only ix or a transition to {name!r} itself"]
    return []


def render_rules(name: str, rules: dict[str, Any]) -> str:
    """The policy text of structured rules: an allowlist on top of ``<abstractions/base>``."""
    filesystem = rules.get("filesystem", {})
    body = ["  #include <abstractions/base>", ""]
    body += [f"  network {family}," for family in sorted(rules.get("network", {}).get("families", []))]
    body += [f"  capability {cap}," for cap in sorted(rules.get("capabilities", []))]
    body += [f'  "{path}" r,' for path in filesystem.get("readOnlyPaths", [])]
    body += [f'  "{path}" rwlk,' for path in filesystem.get("writablePaths", [])]
    body += [f'  "{path}" mrix,' for path in rules.get("executables", [])]
    body += [f'  deny "{path}" rwlkmx,' for path in filesystem.get("deniedPaths", [])]
    lines = ["#include <tunables/global>", "", f"profile {name} flags=({_DEFAULT_FLAGS}) {{", *body, "}"]
    return "\n".join(lines) + "\n"


def validate(obj: Object) -> list[Finding]:
    """Schema, name and policy findings for one AppArmorProfile (syntax is the parser's job)."""
    findings = schema.validate(obj)
    if findings:
        return findings
    name = obj["metadata"]["name"]
    spec = schema.with_defaults(schema.APPARMOR_PROFILE, obj)["spec"]
    findings = check_name(name)
    if "policy" in spec:
        findings += check_policy(name, spec["policy"], spec["mode"])
    return findings


def render(obj: Object) -> Rendered:
    """The text a node loads for a valid AppArmorProfile. Call ``validate`` first."""
    name = obj["metadata"]["name"]
    spec = schema.with_defaults(schema.APPARMOR_PROFILE, obj)["spec"]
    policy = spec["policy"] if "policy" in spec else render_rules(name, spec["rules"])
    complain = spec["mode"] == "complain"
    # The header makes the mode part of the hashed bytes: switching mode is a new version to load.
    header = f"# secprofiles: AppArmorProfile {name}, mode {spec['mode']}\n"
    text = header + policy if policy.endswith("\n") else header + policy + "\n"
    content = text.encode()
    return Rendered(content, content_hash(content), name, complain)
