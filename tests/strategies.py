"""Hypothesis strategies for hostile-input fuzzing: valid profile objects, and valid objects with one mutation.

A generated case is a :class:`Case`: the object, what was mutated (``"none"`` for an untouched valid object)
and the path of the mutated field. Mutations keep the structure and break one field: a wrong type, a huge or
control-character string, a bad enum value, an out-of-range number, an empty list, an unknown field, a deleted
field, a deeply nested value, or (AppArmor) one hostile policy line. ``apiVersion``, ``kind`` and
``metadata.namespace`` are never mutated: they route the request (the injection table covers them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from secprofiles.model import apparmor, schema
from secprofiles.model.findings import field_path
from secprofiles.objects import Object

Path = tuple[str | int, ...]

SYSCALL_NAMES = ("read", "write", "openat", "close", "chmod", "fchmod", "fchmodat", "mkdir", "mkdirat", "rmdir",
                 "chown", "fchown", "unlinkat", "socket", "connect", "bind", "accept4", "clone", "execve",
                 "ptrace", "mount", "umount2", "kill", "personality", "keyctl", "bpf", "perf_event_open", "open")
UNKNOWN_SYSCALLS = ("chmodat", "no_such_call", "x" * 64)
ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64")
BASES = ("bundled/runtime-default", "bundled/audit", "bundled/no-such-base", "sibling")
PATH_SEGMENTS = ("etc", "usr", "bin", "var", "lib", "tmp", "data", "app", "*", "**", "log", "x.conf", "a-b")
CAPABILITIES = ("chown", "net_bind_service", "setuid", "setgid", "kill", "dac_override", "sys_ptrace")
FAMILIES = ("inet", "inet6", "unix", "netlink")

# One statement each that a policy must never get through (also in the injection table).
HOSTILE_POLICY_LINES = (
    "change_profile -> unconfined,", "change_profile->unconfined,", "/bin/sh ux,", "/bin/sh Ux,",
    "/bin/sh px -> docker-default,", "/bin/sh px->docker-default,", '"/tmp/a#b" px -> docker-default,',
    "/bin/sh cx,", "/usr/bin/** Px,", "^hat {\n  }", "hat h {\n  }", "profile child {\n  }",
    "#include </etc/shadow>", "#include</etc/shadow>", 'include "/etc/apparmor.d/usr.sbin.sshd"',
    "#include <abstractions/../../etc/shadow>", "pivot_root oldroot=/old/ /new/ -> docker-default,",
    "file,\x00", "file,\x1b[2J", "file,\r", "file,\x7f", "file,\x85",
)
HUGE = "x" * 70_000  # larger than every string limit (the policy's 64 KiB included)


@dataclass(frozen=True)
class Case:
    """One generated object and how it was made."""

    obj: Object
    mutation: str
    path: Path

    @property
    def field(self) -> str:
        """The mutated field, as findings spell it."""
        return field_path(self.path)


def _dns_label(max_middle: int = 12) -> st.SearchStrategy[str]:
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    return st.builds(lambda a, mid, z: a + mid + z if mid or z else a, st.sampled_from(alnum),
                     st.text(alnum + "-", max_size=max_middle), st.sampled_from(("", *alnum)))


def dns_name() -> st.SearchStrategy[str]:
    """A DNS-1123 subdomain of one or two labels."""
    return st.lists(_dns_label(), min_size=1, max_size=2).map(".".join)


def _unique(items: st.SearchStrategy[Any], max_size: int, min_size: int = 0) -> st.SearchStrategy[list[Any]]:
    return st.lists(items, min_size=min_size, max_size=max_size, unique=True)


@st.composite
def seccomp_arg(draw: st.DrawFn) -> Object:
    arg: Object = {"index": draw(st.integers(0, 5)),
                   "op": draw(st.sampled_from(schema.enum_of("SeccompProfile", "spec", "syscalls", "[]", "args",
                                                             "[]", "op"))),
                   "value": draw(st.integers(0, 2**63 - 1))}
    if draw(st.booleans()):
        arg["valueTwo"] = draw(st.integers(0, 2**32))
    return arg


@st.composite
def seccomp_rule(draw: st.DrawFn) -> Object:
    actions = schema.enum_of("SeccompProfile", "spec", "defaultAction")
    rule: Object = {"action": draw(st.sampled_from([a for a in actions if a != "SCMP_ACT_NOTIFY"]))}
    if draw(st.integers(0, 9)) == 0:
        rule["name"] = draw(st.sampled_from(SYSCALL_NAMES))  # the legacy single-name form
    else:
        rule["names"] = draw(_unique(st.sampled_from(SYSCALL_NAMES), 5, min_size=1))
    if rule["action"] in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE") and draw(st.booleans()):
        rule["errnoRet"] = draw(st.integers(0, 4095))
    if draw(st.integers(0, 3)) == 0:
        rule["args"] = draw(st.lists(seccomp_arg(), min_size=1, max_size=2))
    return rule


@st.composite
def seccomp_profile(draw: st.DrawFn) -> Object:
    """A SeccompProfile that is usually valid (rules may still give one syscall two actions)."""
    default = draw(st.sampled_from(["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_LOG", "SCMP_ACT_KILL_PROCESS"]))
    spec: Object = {"defaultAction": default}
    if default == "SCMP_ACT_ERRNO" and draw(st.booleans()):
        spec["defaultErrnoRet"] = draw(st.integers(0, 4095))
    if draw(st.booleans()):
        spec["architectures"] = draw(_unique(st.sampled_from(ARCHITECTURES), 3, min_size=1))
    if draw(st.integers(0, 4)) == 0:
        spec["flags"] = draw(_unique(st.sampled_from(schema.enum_of("SeccompProfile", "spec", "flags", "[]")), 2))
    if draw(st.integers(0, 4)) == 0:
        spec["baseProfileName"] = draw(st.sampled_from(BASES))
    rules = draw(st.lists(seccomp_rule(), max_size=4))
    if rules or draw(st.booleans()):
        spec["syscalls"] = rules
    return {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE,
            "metadata": {"name": draw(dns_name()), "namespace": "default"}, "spec": spec}


def apparmor_path() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(PATH_SEGMENTS), min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


def _profile_name() -> st.SearchStrategy[str]:
    return dns_name().filter(lambda n: not apparmor.check_name(n))


@st.composite
def apparmor_policy(draw: st.DrawFn, name: str, mode: str) -> str:
    rules = draw(st.lists(st.one_of(
        apparmor_path().map(lambda p: f"{p} r,"), apparmor_path().map(lambda p: f"deny {p} w,"),
        apparmor_path().map(lambda p: f"{p} ix,"), apparmor_path().map(lambda p: f"{p} px -> {name},"),
        st.sampled_from(CAPABILITIES).map(lambda c: f"capability {c},"),
        st.sampled_from(FAMILIES).map(lambda f: f"network {f},"),
        st.sampled_from(["file,", "signal,", "#include <abstractions/nameservice>", "# a comment"]),
    ), max_size=6))
    flags = draw(st.sampled_from(["", " flags=(attach_disconnected)", f" flags=(attach_disconnected,{mode})"]))
    body = "\n".join(f"  {rule}" for rule in ["#include <abstractions/base>", *rules])
    return f"#include <tunables/global>\n\nprofile {name}{flags} {{\n{body}\n}}\n"


@st.composite
def apparmor_profile(draw: st.DrawFn) -> Object:
    """An AppArmorProfile with a raw policy or structured rules."""
    name = draw(_profile_name())
    mode = draw(st.sampled_from(["enforce", "complain"]))
    spec: Object = {"mode": mode} if draw(st.booleans()) or mode == "complain" else {}
    if draw(st.booleans()):
        spec["policy"] = draw(apparmor_policy(name, mode))
    else:
        filesystem = {key: draw(st.lists(apparmor_path(), min_size=1, max_size=3))
                      for key in ("readOnlyPaths", "writablePaths", "deniedPaths") if draw(st.booleans())}
        rules: Object = {"filesystem": filesystem} if filesystem else {}
        if draw(st.booleans()):
            rules["network"] = {"families": draw(_unique(st.sampled_from(FAMILIES), 3))}
        if draw(st.booleans()):
            rules["capabilities"] = draw(_unique(st.sampled_from(CAPABILITIES), 3))
        if draw(st.booleans()):
            rules["executables"] = draw(st.lists(apparmor_path(), min_size=1, max_size=2))
        spec["rules"] = rules
    return {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE, "metadata": {"name": name},
            "spec": spec}


@st.composite
def profile_binding(draw: st.DrawFn) -> Object:
    """A ProfileBinding with a selector, image patterns or both."""
    spec: Object = {"profileRef": {"kind": draw(st.sampled_from([schema.SECCOMP_PROFILE, schema.APPARMOR_PROFILE])),
                                   "name": draw(dns_name())}}
    which = draw(st.sampled_from(["selector", "images", "both"]))
    if which != "images":
        selector: Object = {}
        if draw(st.booleans()):
            selector["matchLabels"] = draw(st.dictionaries(_dns_label(), _dns_label(), max_size=3))
        if draw(st.booleans()):
            selector["matchExpressions"] = draw(st.lists(st.fixed_dictionaries(
                {"key": _dns_label(), "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"])},
                optional={"values": st.lists(_dns_label(), max_size=3)}), max_size=2))
        spec["selector"] = selector
    if which != "selector":
        spec["images"] = draw(st.lists(st.sampled_from(["docker.io/library/*", "nginx:*", "*", "registry/[a-z]*",
                                                        "quay.io/x/y@sha256:*"]), min_size=1, max_size=3))
    if draw(st.booleans()):
        spec["containers"] = draw(st.lists(_dns_label(), max_size=2))
    if draw(st.booleans()):
        spec["enforcement"] = draw(st.sampled_from(["Warn", "Reject"]))
    if draw(st.booleans()):
        spec["overrideExisting"] = draw(st.booleans())
    return {"apiVersion": schema.API_VERSION, "kind": schema.PROFILE_BINDING,
            "metadata": {"name": draw(dns_name()), "namespace": "default"}, "spec": spec}


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = {"n": value} if level % 2 else [value]
    return value


def hostile_value() -> st.SearchStrategy[Any]:
    """Values of the wrong type, size or content for any field."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([-1, 6, 4096, 2**63, 2**64]),
        st.floats(allow_nan=False, allow_infinity=False), st.just(1.0),
        st.text(st.characters(codec="utf-8"), max_size=20), st.just(HUGE), st.integers(60, 300).map("a".__mul__),
        st.sampled_from(["SCMP_ACT_EXPLODE", "../../etc/passwd", "a/b", "..", "\x00", "x\x00y", "bundled/../x",
                         "Enforce", "UPPER", "/usr/bin/foo", "unconfined", "docker-default", "\u2028", "é"]),
        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        st.just([]), st.just({}), st.integers(20, 100).map(_nested),
    )


def _paths(value: Any, path: Path = ()) -> list[Path]:
    found = [path] if path else []
    if isinstance(value, dict):
        for key, sub in value.items():
            found += _paths(sub, (*path, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            found += _paths(sub, (*path, index))
    return found


_ROUTING = {("apiVersion",), ("kind",), ("metadata", "namespace")}


def _parent(obj: Object, path: Path) -> Any:
    node: Any = obj
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Object]) -> Case:
    """``base``'s object with one hostile change."""
    obj = copy.deepcopy(draw(base))
    paths = [p for p in _paths(obj) if p not in _ROUTING]
    kinds = ["replace", "replace", "replace", "delete", "unknown", "empty"]
    if obj["kind"] == schema.APPARMOR_PROFILE and "policy" in obj["spec"]:
        kinds += ["policy-line", "policy-line"]
    kind = draw(st.sampled_from(kinds))
    if kind == "policy-line":
        lines = obj["spec"]["policy"].split("\n")
        at = draw(st.integers(3, len(lines) - 2))
        lines.insert(at, "  " + draw(st.sampled_from(HOSTILE_POLICY_LINES)))
        obj["spec"]["policy"] = "\n".join(lines)
        return Case(obj, kind, ("spec", "policy"))
    path = draw(st.sampled_from(paths))
    parent = _parent(obj, path)
    if kind == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif kind == "unknown":
        while not isinstance(_parent(obj, path), dict):
            path = path[:-1]
        name = draw(st.sampled_from(["unknownField", "Names", "status2", "x" * 100, "", "spec"]))
        path = (*path[:-1], name)
        _parent(obj, path)[name] = draw(st.one_of(st.integers(), st.text(max_size=5)))
    elif kind == "empty":
        current = parent[path[-1]]
        parent[path[-1]] = type(current)() if isinstance(current, (list, dict, str)) else None
    else:
        kind = "replace"
        parent[path[-1]] = draw(hostile_value())
    return Case(obj, kind, path)


def valid(base: st.SearchStrategy[Object]) -> st.SearchStrategy[Case]:
    """``base``'s object untouched."""
    return base.map(lambda obj: Case(obj, "none", ()))


KINDS = {schema.SECCOMP_PROFILE: seccomp_profile(), schema.APPARMOR_PROFILE: apparmor_profile(),
         schema.PROFILE_BINDING: profile_binding()}


def cases() -> st.SearchStrategy[Case]:
    """Any kind; one case in four untouched, the others mutated once."""
    generated = [st.one_of(valid(base), mutated(base), mutated(base), mutated(base)) for base in KINDS.values()]
    return st.one_of(*generated)
