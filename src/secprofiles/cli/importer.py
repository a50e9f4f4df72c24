"""``secprofiles import``: existing profiles (Docker/OCI seccomp JSON, AppArmor files) to CR objects."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from secprofiles.model import apparmor, apparmor_syntax, schema, syscalls
from secprofiles.objects import Object

# What containerd and Docker grant a container by default (Kubernetes nodes run containerd).
DEFAULT_CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")


@dataclass
class Imported:
    """The object, plus what the import changed that a person should know."""

    obj: Object
    notes: list[str] = field(default_factory=list)


class UnsupportedInputError(ValueError):
    """The input is not a profile this command can import."""


SECCOMP_JSON, APPARMOR_TEXT, KUBERNETES_YAML = "seccomp", "apparmor", "kubernetes"
_LEADING_COMMENTS = re.compile(r"\A(?:[ \t]*(?:#[^\n]*)?\r?\n)*")


@dataclass(frozen=True)
class Recognised:
    """What a file is, the text to read it from (comment lines before JSON blanked) and what that changed."""

    format: str
    text: str
    notes: tuple[str, ...] = ()


def recognise(text: str) -> Recognised:
    """Tell the format before judging the content: seccomp JSON (also after ``#`` comment lines, which JSON
    does not have and which are blanked, keeping line numbers), Kubernetes YAML objects, or AppArmor text.
    Raises UnsupportedInputError when it is none of them, saying what it looks like."""
    text = text.removeprefix("\ufeff")
    leading = _LEADING_COMMENTS.match(text)
    rest = text[leading.end():] if leading else text
    if rest.startswith(("{", "[")):
        comments = leading[0].count("#") if leading else 0
        blanked = re.sub(r"[^\n]", "", leading[0]) + rest if leading else rest
        notes = (f"ignored {comments} '#' comment line(s) before the JSON (JSON has no comments)",) if comments else ()
        return Recognised(SECCOMP_JSON, blanked, notes)
    if _is_kubernetes_yaml(text):
        return Recognised(KUBERNETES_YAML, text)
    if apparmor_syntax.parse(text).blocks():
        return Recognised(APPARMOR_TEXT, text)
    raise UnsupportedInputError("not recognised: neither seccomp JSON (an object starting with '{'), nor "
                                "Kubernetes YAML objects (apiVersion, kind), nor AppArmor text with a profile "
                                "('profile NAME {', '/path {')")


def _is_kubernetes_yaml(text: str) -> bool:
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        return False
    return bool(documents) and all(isinstance(d, dict) and "apiVersion" in d and "kind" in d for d in documents)


def dns_name(text: str) -> str:
    """A Kubernetes object name derived from a file or profile name."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")
    return name[:200] or "imported"


def import_seccomp(text: str, name: str, namespace: str | None, arch: str,
                   capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES) -> Imported:
    """A SeccompProfile from OCI or Docker seccomp JSON, resolved for ``arch`` and ``capabilities``.

    Handles the legacy single ``name``, ``names``, ``archMap``, ``includes``/``excludes`` (by arch and
    capability; ``minKernel`` is assumed met) and drops ``comment`` fields and names that are not a
    syscall on the target architectures. A syscall listed in several rules without arguments keeps the
    last rule's action, so the result has one action per syscall.
    """
    try:
        source = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnsupportedInputError(f"not valid JSON: {error.msg} at line {error.lineno}") from None
    if isinstance(source, dict) and "default_action" in source:
        raise UnsupportedInputError("a pre-release Docker seccomp file (2016: 'default_action' and numeric "
                                    "actions, never a released format): not supported; start from a profile "
                                    "with 'defaultAction'")
    if not isinstance(source, dict) or "defaultAction" not in source:
        raise UnsupportedInputError("JSON, but not a seccomp profile: no defaultAction")
    go_arch = next((g for g, o in syscalls.GO_ARCH_TO_OCI.items() if o == arch), arch)
    granted = {c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in capabilities}
    notes: list[str] = []

    spec: dict[str, Any] = {"defaultAction": source["defaultAction"]}
    if "defaultErrnoRet" in source:
        spec["defaultErrnoRet"] = source["defaultErrnoRet"]
    architectures = list(source.get("architectures", []))
    for entry in source.get("archMap") or []:
        if entry.get("architecture") == arch:
            architectures = [arch, *entry.get("subArchitectures", [])]
    if source.get("archMap") and not architectures:
        notes.append(f"archMap has no entry for {arch}; architectures left unset (the node's own)")
    if architectures:
        spec["architectures"] = sorted(set(architectures))
    if source.get("flags"):
        spec["flags"] = list(source["flags"])

    rules: list[dict[str, Any]] = []
    dropped: set[str] = set()
    for entry in source.get("syscalls") or []:
        includes, excludes = entry.get("includes") or {}, entry.get("excludes") or {}
        if includes.get("arches") and go_arch not in includes["arches"]:
            continue
        if excludes.get("arches") and go_arch in excludes["arches"]:
            continue
        if includes.get("caps") and not set(includes["caps"]) <= granted:
            continue
        if excludes.get("caps") and set(excludes["caps"]) & granted:
            continue
        names = list(entry.get("names") or ([entry["name"]] if entry.get("name") else []))
        kept = [n for n in names if syscalls.is_known(n, spec.get("architectures", []))]
        dropped |= set(names) - set(kept)
        if not kept:
            continue
        rule: dict[str, Any] = {"names": kept, "action": entry["action"]}
        if entry.get("errnoRet") is not None:
            rule["errnoRet"] = entry["errnoRet"]
        if entry.get("args"):
            rule["args"] = [{k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a} for a in entry["args"]]
            for arg in rule["args"]:
                if not arg.get("valueTwo"):
                    arg.pop("valueTwo", None)
        if not rule.get("args"):
            # The profile's intent: a later, capability-specific rule overrides an earlier general one.
            overridden = set(kept)
            for earlier in rules:
                if not earlier.get("args"):
                    earlier["names"] = [n for n in earlier["names"] if n not in overridden]
        rules.append(rule)
    rules = [r for r in rules if r["names"]]
    if dropped:
        on = ", ".join(spec.get("architectures", [])) or "any architecture libseccomp knows"
        notes.append(f"dropped names that are not a syscall on {on}: {', '.join(sorted(dropped))}")
    spec["syscalls"] = rules
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    obj = {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE, "metadata": metadata, "spec": spec}
    return Imported(obj, notes)


def import_apparmor(text: str, name: str | None, profile: str | None = None) -> Imported:
    """An AppArmorProfile from an AppArmor profile file, as close to the original as the rules allow.

    The main profile (``profile``, else the file's first top-level profile; never a child) is renamed to the
    object name and loses its attachment; other top-level profiles, ``include <local/…>`` lines (site
    overrides of the host), transitions to profiles outside this one and unconfined execution are removed or
    narrowed, each with a note naming the original line: exec rules that would leave the profile become ``ix``
    (the program runs under this profile), ``change_profile``/``pivot_root`` to other profiles are commented
    out. Nothing else changes, so line numbers of the original stay close. What remains refused (a size over
    the limit, an ``unconfined`` profile, an include of a host file) is reported by the checks.
    """
    parsed = apparmor_syntax.parse(text)
    tops = parsed.blocks()
    if not tops:
        raise UnsupportedInputError("no AppArmor profile found: expected 'profile NAME {', 'profile NAME "
                                    "ATTACHMENT {' or '/path {'")
    if profile is not None:
        chosen = [b for b in tops if b.name == profile]
        if not chosen:
            raise UnsupportedInputError(f"no top-level profile {profile!r}; the file defines "
                                        f"{', '.join(repr(b.name) for b in tops)}")
        main = chosen[0]
    else:
        main = tops[0]
    notes: list[str] = []
    object_name = name or _apparmor_object_name(main.name, notes)
    mode = "complain" if "complain" in main.flags else "enforce"
    edits = _AppArmorEdits(text, main.name, object_name, mode)
    flags = [f for f in main.flags if f not in ("complain", "enforce")]
    edits.header(main, flags)
    for other in tops:
        if other is not main:
            edits.drop_profile(other)
    edits.walk(parsed.items, main)
    policy = edits.apply()
    policy = policy if policy.endswith("\n") else policy + "\n"
    obj = {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE, "metadata": {"name": object_name},
           "spec": {"mode": mode, "policy": policy}}
    return Imported(obj, notes + edits.notes)


def _apparmor_object_name(profile_name: str, notes: list[str]) -> str:
    """A valid, non-reserved object name from a profile name (``/usr/sbin/ntpd`` -> ``ntpd``), saying how."""
    base = profile_name.rstrip("/").rsplit("/", 1)[-1] if profile_name.startswith("/") else profile_name
    candidate = dns_name(base)
    if candidate != profile_name:
        notes.append(f"object name {candidate!r} made from profile name {profile_name!r} (a DNS-1123 name: lower "
                     "case, '-' for other characters, the last path element of a path)")
    if apparmor.is_reserved(candidate):
        notes.append(f"{candidate!r} is reserved for a host or container-runtime profile: named "
                     f"'imported-{candidate}' instead (choose another with --name)")
        candidate = f"imported-{candidate}"
    return candidate


class _AppArmorEdits:
    """Edits of the original text, collected with their notes and applied from the end backwards."""

    def __init__(self, text: str, old_name: str, new_name: str, mode: str) -> None:
        self.text, self.old_name, self.new_name, self.mode = text, old_name, new_name, mode
        self.edits: list[tuple[int, int, str]] = []
        self.notes: list[str] = []

    def apply(self) -> str:
        text = self.text
        for start, end, replacement in sorted(self.edits, reverse=True):
            text = text[:start] + replacement + text[end:]
        return text

    def _comment(self, start: int, end: int, why: str) -> str:
        """``# secprofiles import: <why>: <original>``, on a line of its own."""
        original = " ".join(self.text[start:end].split())
        after = "" if self.text[end:end + 1] in ("\n", "") else "\n"
        return f"# secprofiles import: {why}: {original}{after}"

    def header(self, main: apparmor_syntax.Block, flags: list[str]) -> None:
        statement = main.header
        new = f"profile {self.new_name}" + (f" flags=({','.join(flags)})" if flags else "") + " {"
        self.edits.append((statement.start, statement.end, new))
        dropped = " ".join(t.text for t in main.attachment + main.conditions)
        if dropped:
            self.notes.append(f"line {main.line}: dropped the attachment {dropped!r}: pods select the profile by name")
        elif main.name.startswith("/"):
            self.notes.append(f"line {main.line}: dropped the attachment {main.name!r} (the profile was named by "
                              "it): pods select the profile by name")
        if main.name != self.new_name:
            self.notes.append(f"line {main.line}: renamed profile {main.name!r} to {self.new_name!r}")

    def drop_profile(self, block: apparmor_syntax.Block) -> None:
        end = block.closing.end if block.closing else len(self.text)
        self.edits.append((block.header.start, end, f"# secprofiles import: dropped profile {block.name} (lines "
                                                    f"{block.line}-{self.text.count(chr(10), 0, end) + 1})\n"))
        self.notes.append(f"line {block.line}: dropped the second top-level profile {block.name!r}: a policy "
                          f"defines one (import it on its own with --profile {block.name})")

    def walk(self, items: list[apparmor_syntax.Statement | apparmor_syntax.Block],
             main: apparmor_syntax.Block | None) -> None:
        """Includes everywhere; rules only inside ``main`` (``None``: outside any profile)."""
        for item in items:
            if isinstance(item, apparmor_syntax.Block):
                if item.kind == apparmor_syntax.CONDITIONAL:
                    self.walk(item.items, main)
                elif item is main or (main is not None and self._inside(main, item.header.start)):
                    self.walk(item.items, main)
                    if item is not main:
                        self._child_flags(item)
            elif item.kind == apparmor_syntax.INCLUDE:
                self._include(item)
            elif item.kind == apparmor_syntax.RULE and main is not None and self._inside(main, item.start):
                self._rule(item)

    def _inside(self, block: apparmor_syntax.Block, offset: int) -> bool:
        return block.header.start < offset < (block.closing.start if block.closing else len(self.text))

    def _child_flags(self, block: apparmor_syntax.Block) -> None:
        """A complain child in an enforcing profile would allow everything: it is enforced with its parent."""
        if "complain" in block.flags and self.mode == "enforce" and block.flags_token is not None:
            kept = [f for f in block.flags if f != "complain"]
            token = block.flags_token
            self.edits.append((token.start, token.end, f"({','.join(kept)})" if kept else "()"))
            self.notes.append(f"line {block.line}: {block.kind} {block.name!r} loses its 'complain' flag: it is "
                              "enforced with the profile (spec.mode: complain logs instead, for all of it)")

    def _include(self, statement: apparmor_syntax.Statement) -> None:
        """``<local/…>`` and any other optional include of a host file (``include if exists <php-fpm.d>``): the
        host's site overrides, absent on nodes; a required include of a host file stays (and is refused)."""
        if statement.target.startswith("<local/") or (statement.if_exists and
                                                       not apparmor.include_allowed(statement.target)):
            self.edits.append((statement.start, statement.end,
                               self._comment(statement.start, statement.end, "dropped the host's site override")))
            self.notes.append(f"line {statement.line}: dropped the include of {statement.target}: the host's "
                              "site overrides are not part of the profile")

    def _rule(self, statement: apparmor_syntax.Statement) -> None:
        keyword, deny = apparmor.rule_keyword(statement)
        target = apparmor.transition_target(statement)
        if target is not None:
            renamed = self._renamed(target.text)
            if renamed != target.text:
                self.edits.append((target.start, target.end, renamed))
                self.notes.append(f"line {target.line}: transition target {target.text!r} renamed to {renamed!r}")
        if keyword in ("change_profile", "pivot_root") and apparmor.check_rule(self._as_renamed(statement),
                                                                             self.new_name):
            self.edits.append((statement.start, statement.end,
                               self._comment(statement.start, statement.end, f"removed ({keyword} out of "
                                                                             "the profile)")))
            self.notes.append(f"line {statement.line}: commented out {' '.join(statement.words)!r}: {keyword} "
                              "may only lead to this profile or its children")
            return
        if deny:
            return
        for mode in apparmor.exec_modes(statement):
            self._exec(statement, mode, target)

    def _renamed(self, target: str) -> str:
        if target == self.old_name:
            return self.new_name
        if target.startswith(self.old_name + "//"):
            return self.new_name + target[len(self.old_name):]
        return target

    def _as_renamed(self, statement: apparmor_syntax.Statement) -> apparmor_syntax.Statement:
        tokens = [apparmor_syntax.Token(t.kind, self._renamed(t.text), t.line, t.start, t.end)
                  for t in statement.tokens]
        return apparmor_syntax.Statement(statement.kind, statement.line, statement.start, statement.end, tokens)

    def _exec(self, statement: apparmor_syntax.Statement, mode: apparmor_syntax.Token,
              target: apparmor_syntax.Token | None) -> None:
        single = apparmor_syntax.Statement(statement.kind, statement.line, statement.start, statement.end,
                                           [t for t in self._as_renamed(statement).tokens
                                            if t.kind != apparmor_syntax.WORD or t.start == mode.start
                                            or not apparmor_syntax.MODES.match(t.text)])
        if not apparmor.check_rule(single, self.new_name):
            return
        lower = mode.text.lower()
        exec_part = re.search(r"[pc]?[iu]?x", lower)
        assert exec_part is not None  # exec_modes() only returns x forms
        keep_child = "c" in exec_part[0] and (target is None or re.match(r"^[^/:&@\s^]+$", target.text))
        replacement = "cix" if keep_child else "ix"
        new_mode = mode.text[:exec_part.start()] + replacement + mode.text[exec_part.end():]
        self.edits.append((mode.start, mode.end, new_mode))
        if not keep_child and target is not None:
            arrow = next(i for i, t in enumerate(statement.tokens) if t.kind == apparmor_syntax.ARROW)
            start = statement.tokens[arrow - 1].end if arrow else statement.tokens[arrow].start
            if (start, target.end, "") not in self.edits:  # several x modes share one target
                self.edits.append((start, target.end, ""))
        to = f" -> {target.text}" if target is not None and not keep_child else ""
        self.notes.append(f"line {mode.line}: exec {mode.text}{to} became {new_mode}: "
                          + ("a fallback to unconfined is not allowed" if keep_child else
                             "the program now runs under this profile (transitions out of it and unconfined "
                             "execution are not allowed)"))
