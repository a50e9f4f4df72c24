"""AppArmorProfile: policy checks and rendering to the text a node loads.

A policy defines exactly one top-level profile, named exactly like the object, plus any child profiles and
hats inside it: their kernel names are ``<name>//<child>``, so they cannot replace or reach another profile.
Refused, each naming the line and the rule: a second top-level profile, attachments of the profile (pods select
it by name), exec transitions and ``change_profile``/``pivot_root`` to anything but the profile itself and its
children (``Px -> <name>//child``, ``Cx -> child``, ``^hat``), unconfined execution (``ux``, ``PUx``, …),
includes outside ``<abstractions/…>``, ``<tunables/…>``, ``<abi/…>``, the ``unconfined`` flag anywhere, a
``complain`` child in an enforcing profile, a mode flag contradicting ``spec.mode``, host/runtime profile
names and control characters. The grammar is read by ``apparmor_syntax`` (the parser's lexer rules); syntax,
the names the text defines and the includes it follows are then confirmed by the parser (``apparmor_parser``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from secprofiles.model import apparmor_syntax as syntax
from secprofiles.model import schema
from secprofiles.model.findings import Finding
from secprofiles.model.seccomp import content_hash
from secprofiles.objects import Object

MAX_POLICY_BYTES = 65536
RENDER_HEADER_LINES = 1  # the "# secprofiles: …" line ``render`` puts before the policy
# Profiles that belong to the host or the container runtimes: never defined through secprofiles.
RESERVED_NAMES = frozenset({"unconfined", "docker-default", "cri-containerd.apparmor.d", "crio-default", "podman",
                            "runc", "crun", "buildah", "lxc-default"})
RESERVED_PREFIXES = ("cri-containerd", "docker-", "crio-", "containers-default", "lxc-", "snap.", "snap-")
_SAFE_FLAGS = frozenset({"attach_disconnected", "no_attach_disconnected", "mediate_deleted", "delegate_deleted",
                         "chroot_relative", "namespace_relative", "chroot_attach", "chroot_no_attach",
                         "interruptible"})
_SAFE_FLAG_PREFIXES = ("attach_disconnected.path=", "attach_disconnected.ipc=", "kill.signal=", "error=")
_DEFAULT_FLAGS = "attach_disconnected,mediate_deleted"
# Where includes may come from: the node's standard AppArmor files (a policy cannot read host files through them).
ALLOWED_INCLUDE = re.compile(r"^<(abstractions|tunables|abi)/[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*>$")
_PLAIN_CHILD = re.compile(r"^[^/:&@\s^]+$")


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
    if is_reserved(name):
        return [Finding("metadata.name", f"{name!r} is the name of a host or container-runtime profile; "
                                         "choose another name")]
    return []


def is_reserved(name: str) -> bool:
    """Whether ``name`` belongs to the host or a container runtime."""
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)


def defines_only(name: str, defined: list[str]) -> bool:
    """Whether the kernel names a policy defines (``apparmor_parser -N``) are ``name`` and its children/hats."""
    return name in defined and all(d == name or d.startswith(name + "//") for d in defined)


def include_allowed(target: str) -> bool:
    """Whether an include/abi target is one of the node's standard AppArmor files."""
    return bool(ALLOWED_INCLUDE.match(target)) and ".." not in target


def is_own_profile(target: str, name: str) -> bool:
    """A transition target that stays inside profile ``name``: itself or one of its children or hats."""
    return target == name or (target.startswith(name + "//") and "&" not in target and "@{" not in target
                              and ":" not in target)


def check_policy(name: str, policy: str, mode: str = "enforce") -> list[Finding]:
    """Checks of a raw policy; every finding names ``spec.policy``, the line and the rule."""
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

    parsed = syntax.parse(policy)
    findings += [_at(line, f"unbalanced braces: {message}") for line, message in parsed.problems]
    profiles: list[syntax.Block] = []
    findings += _check_top_level(parsed.items, name, profiles)
    if not profiles:
        findings.append(Finding(field, f"defines no profile; expected 'profile {name} {{ … }}'"))
        return findings
    if len(profiles) > 1:
        extra = ", ".join(f"{p.name!r} (line {p.line})" for p in profiles[1:])
        findings.append(Finding(field, f"defines {len(profiles)} top-level profiles; only one is allowed, with "
                                       f"children and hats inside it (extra: {extra})"))
    main = profiles[0]
    findings += _check_main_header(main, name, mode)
    findings += _check_body(main, name, mode)
    return sorted(set(findings), key=_by_line)


def _by_line(finding: Finding) -> tuple[int, str]:
    match = re.match(r"line (\d+):", finding.message)
    return (int(match[1]) if match else 0, finding.message)


def _at(lineno: int, message: str) -> Finding:
    return Finding("spec.policy", f"line {lineno}: {message}")


def _is_control(char: str) -> bool:
    """C0 (but tab), DEL, C1 and the Unicode line separators: the parser and this lexer could split lines
    differently around them."""
    code = ord(char)
    return (code < 32 and char != "\t") or 127 <= code <= 159 or char in "\u2028\u2029"


def _clip(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _statement_text(policy: str, statement: syntax.Statement) -> str:
    return _clip(policy[statement.start:statement.end])


def _check_top_level(items: list[syntax.Statement | syntax.Block], name: str,
                     profiles: list[syntax.Block]) -> list[Finding]:
    found: list[Finding] = []
    for item in items:
        if isinstance(item, syntax.Block):
            if item.kind == syntax.CONDITIONAL:
                found += _check_top_level(item.items, name, profiles)
            elif item.kind == syntax.PROFILE:
                profiles.append(item)
            else:
                what = "hat" if item.kind == syntax.HAT else "block"
                found.append(_at(item.line, f"unexpected top-level {what} {_clip(' '.join(item.header.words))!r}; "
                                            f"hats and child profiles belong inside 'profile {name} {{ … }}'"))
        elif item.kind == syntax.INCLUDE:
            found += _check_include(item)
        elif item.kind == syntax.ASSIGNMENT:
            continue
        elif item.kind == syntax.RULE and item.words and item.words[0] == "abi":
            found += _check_abi(item)
        elif item.kind == syntax.RULE and item.words and item.words[0] == "alias":
            continue  # path aliases apply to the profiles of this policy only
        else:
            found.append(_at(item.line, f"unexpected top-level statement {_clip(' '.join(item.words))!r}; "
                                        f"define one 'profile {name} {{ … }}'"))
    return found


def _check_include(statement: syntax.Statement) -> list[Finding]:
    if include_allowed(statement.target):
        return []
    keyword = ("#include" if statement.hash_form else "include") + (" if exists" if statement.if_exists else "")
    return [_at(statement.line, f"{keyword} {_clip(statement.target) or '(nothing)'} is not allowed; only "
                                "<abstractions/…>, <tunables/…> and <abi/…>")]


def _check_abi(statement: syntax.Statement) -> list[Finding]:
    target = statement.words[1] if len(statement.words) > 1 else ""
    if statement.tokens[1:2] and statement.tokens[1].kind == syntax.WORD and target.startswith("<abi/") and \
            include_allowed(target):
        return []
    return [_at(statement.line, f"abi {_clip(target)} is not allowed; only <abi/…>")]


def _check_main_header(block: syntax.Block, name: str, mode: str) -> list[Finding]:
    found: list[Finding] = []
    if block.name != name:
        found.append(_at(block.line, f"profile is named {block.name!r}; it must be named exactly like the object, "
                                     f"{name!r}"))
    if block.attachment or block.conditions:
        attachment = " ".join(t.text for t in block.attachment + block.conditions)
        found.append(_at(block.line, f"attachment {_clip(attachment)!r} is not allowed: it would confine host "
                                     "programs; pods select the profile by name"))
    found += _check_flags(block, mode, main=True)
    return found


def _check_flags(block: syntax.Block, mode: str, main: bool) -> list[Finding]:
    found: list[Finding] = []
    what = "profile" if main else f"{block.kind} {block.name!r}"
    for flag in block.flags:
        if flag in ("complain", "enforce"):
            if main and flag != mode:
                found.append(_at(block.line, f"flag {flag!r} contradicts spec.mode {mode!r}; set the mode in "
                                             "spec.mode only"))
            elif not main and flag == "complain" and mode == "enforce":
                found.append(_at(block.line, f"{what} has flag 'complain' in an enforcing profile: it would allow "
                                             "everything; set the mode in spec.mode only"))
        elif flag not in _SAFE_FLAGS and not flag.startswith(_SAFE_FLAG_PREFIXES):
            found.append(_at(block.line, f"{what} flag {flag!r} is not allowed"))
    return found


def _check_body(block: syntax.Block, name: str, mode: str) -> list[Finding]:
    found: list[Finding] = []
    for item in block.items:
        if isinstance(item, syntax.Block):
            if item.kind == syntax.CONDITIONAL:
                found += _check_body(item, name, mode)
                continue
            if item.kind == syntax.UNKNOWN_BLOCK:
                found.append(_at(item.line, f"unexpected block {_clip(' '.join(item.header.words))!r}"))
                continue
            if not item.name or "//" in item.name or item.name.startswith((":", "&")):
                found.append(_at(item.line, f"{item.kind} name {item.name!r} is not allowed: children and hats "
                                            "are named plainly inside their parent"))
            found += _check_flags(item, mode, main=False)
            found += _check_body(item, name, mode)
        elif item.kind == syntax.INCLUDE:
            found += _check_include(item)
        elif item.kind == syntax.RULE:
            rule = _clip(" ".join(item.words) + ",")
            found += [_at(item.line, f"{message} (rule {rule!r})") for message in check_rule(item, name)]
        elif item.kind == syntax.ASSIGNMENT:
            found.append(_at(item.line, "variables are assigned before the profile, not inside it"))
    return found


def transition_target(statement: syntax.Statement) -> syntax.Token | None:
    """The token after ``->`` in a statement, if any."""
    for index, token in enumerate(statement.tokens[:-1]):
        if token.kind == syntax.ARROW:
            return statement.tokens[index + 1]
    return None


def rule_keyword(statement: syntax.Statement) -> tuple[str, bool]:
    """The rule's first word after qualifiers (audit, deny, owner, priority=…), and whether it is a deny rule."""
    deny = False
    for token in statement.tokens:
        if token.kind == syntax.WORD and (token.text in syntax.QUALIFIERS or token.text.startswith("priority=")):
            deny = deny or token.text == "deny"
            continue
        return token.text, deny
    return "", deny


def exec_modes(statement: syntax.Statement) -> list[syntax.Token]:
    """The tokens of a rule that are exec permissions (``x`` forms of the file modes)."""
    return [t for t in statement.tokens if t.kind == syntax.WORD and syntax.MODES.match(t.text)
            and "x" in t.text.lower()]


def check_rule(statement: syntax.Statement, name: str) -> list[str]:
    """What makes one rule leave profile ``name`` (its children and hats included); empty when it stays."""
    keyword, deny = rule_keyword(statement)
    target_token = transition_target(statement)
    target = target_token.text if target_token is not None else None
    if keyword == "change_profile":
        if target is None:
            return ["change_profile without '-> <target>' lets the workload move to any profile"]
        if not is_own_profile(target, name):
            return [f"change_profile to {target!r} is not allowed: only to {name!r} itself or its children "
                    f"({name}//…)"]
        return []
    if keyword == "pivot_root" and target_token is not None and not is_own_profile(str(target), name):
        return [f"pivot_root to profile {target!r} is not allowed: it lets the workload leave this profile"]
    if deny:
        return []  # a deny rule grants no transition (the parser refuses exec qualifiers there)
    problems = []
    for mode in exec_modes(statement):
        lower = mode.text.lower()
        if "u" in lower:
            problems.append(f"unconfined execution ({mode.text}) is not allowed")
        elif "p" in lower:
            if target is None:
                problems.append(f"exec transition {mode.text} to the profile matching the program is not allowed "
                                f"(it may be a host profile); only ix, Cx to a child, or Px -> {name}//<child>")
            elif not is_own_profile(target, name):
                problems.append(f"exec transition {mode.text} -> {target!r} is not allowed: only to {name!r} itself "
                                f"or its children ({name}//…)")
        elif "c" in lower and target is not None and not _PLAIN_CHILD.match(target):
            problems.append(f"exec transition {mode.text} -> {target!r} is not allowed: Cx names a child profile "
                            "plainly")
    return problems


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
