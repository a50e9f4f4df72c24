"""The injection table: hostile objects that must be refused before any node writes or loads anything.

Each case names the field the refusal must name and words of the reason. ``api`` says who refuses first: the
API server (``True``: its message names the field) or the model (``False``: the API server stores the object;
``secprofiles lint`` and the operator's status refuse it, and the agent, which evaluates on its own, never
writes or loads it). The model refuses every case, whoever refuses first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secprofiles.model import schema
from secprofiles.objects import Object


@dataclass(frozen=True)
class Injection:
    """One hostile object and the refusal it must get."""

    id: str
    obj: Object
    field: str
    words: str
    api: bool

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])


def policy(name: str, rules: str = "file,", header: str | None = None) -> str:
    """A policy whose profile line says ``header`` (default ``profile <name>``) around ``rules``."""
    return (f"#include <tunables/global>\n{header or f'profile {name}'} flags=(attach_disconnected) {{\n"
            f"  #include <abstractions/base>\n  {rules}\n}}\n")


def apparmor(name: str, text: str | None = None, **spec: Any) -> Object:
    body = spec or {"policy": text if text is not None else policy(name)}
    return {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE, "metadata": {"name": name},
            "spec": body}


def seccomp(name: str, namespace: str = "inject", **spec: Any) -> Object:
    return {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"defaultAction": "SCMP_ACT_ALLOW", **spec}}


def _rules(*names: str) -> list[Object]:
    return [{"names": list(names), "action": "SCMP_ACT_ERRNO"}]


def _aa(id: str, rules: str, words: str) -> Injection:
    name = f"inject-{id}"
    return Injection(id, apparmor(name, policy(name, rules)), "spec.policy", words, api=False)


INJECTIONS: list[Injection] = [
    # AppArmor: host and runtime profile names, as the object's name (and so the kernel profile name).
    Injection("aa-name-cri-containerd", apparmor("cri-containerd.apparmor.d"), "metadata.name",
              "container-runtime profile", api=False),
    Injection("aa-name-docker-default", apparmor("docker-default"), "metadata.name", "container-runtime profile",
              api=False),
    Injection("aa-name-unconfined", apparmor("unconfined"), "metadata.name", "container-runtime profile",
              api=False),
    Injection("aa-name-runc", apparmor("runc"), "metadata.name", "container-runtime profile", api=False),
    Injection("aa-name-absolute-path", apparmor("/usr/bin/foo"), "metadata.name", "RFC 1123", api=True),
    # AppArmor: the policy defines a host profile, several profiles, hats, children, transitions.
    Injection("aa-policy-defines-cri-containerd", apparmor("inject-a", policy("", header="profile cri-containerd.apparmor.d")),
              "spec.policy", "must be named exactly", api=False),
    Injection("aa-policy-defines-docker-default", apparmor("inject-b", policy("", header="profile docker-default")),
              "spec.policy", "must be named exactly", api=False),
    Injection("aa-policy-defines-unconfined", apparmor("inject-c", policy("", header="profile unconfined")),
              "spec.policy", "must be named exactly", api=False),
    Injection("aa-policy-absolute-path-profile", apparmor("inject-d", policy("", header="/usr/bin/foo")),
              "spec.policy", "must be named exactly", api=False),
    Injection("aa-policy-attachment", apparmor("inject-e", policy("", header="profile inject-e /usr/bin/**")),
              "spec.policy", "attachment", api=False),
    Injection("aa-several-profiles", apparmor("inject-f", policy("inject-f") + "profile other {\n  file,\n}\n"),
              "spec.policy", "only one is allowed", api=False),
    # Children and hats are allowed (their kernel names live under the parent); what they could do is not.
    _aa("unconfined-child", "profile child flags=(unconfined) {\n  }", "flag 'unconfined'"),
    _aa("complain-hat", "^sneaky flags=(complain) {\n  }", "complain"),
    _aa("child-named-into-another-profile", "profile docker-default//x {\n  }", "named plainly"),
    _aa("cx-to-namespaced-profile", "/bin/sh Cx -> :root:docker-default,", "Cx names a child"),
    _aa("px-to-child-of-another-profile", "/bin/sh Px -> docker-default//child,", "exec transition"),
    _aa("px-stacking-another-profile", "/bin/sh Px -> inject-px-stacking-another-profile//&docker-default,",
        "exec transition"),
    _aa("unconfined-exec-in-child", "profile child {\n    /bin/sh Ux,\n  }", "unconfined execution"),
    _aa("change-profile-anywhere", "change_profile,", "any profile"),
    _aa("px-through-variable", "/bin/sh Px -> @{target},", "exec transition"),
    _aa("change-profile-unconfined", "change_profile -> unconfined,", "change_profile"),
    _aa("change-profile-unspaced", "change_profile->unconfined,", "change_profile"),
    _aa("px-to-host-profile", "/bin/sh px -> docker-default,", "exec transition"),
    _aa("px-unspaced", "/bin/sh px->docker-default,", "exec transition"),
    _aa("px-after-quoted-hash", '"/tmp/a#b" px -> docker-default,', "exec transition"),
    _aa("unconfined-exec", "/bin/sh ux,", "unconfined execution"),
    _aa("pivot-root-to-host-profile", "pivot_root oldroot=/old/ /new/ -> docker-default,", "pivot_root"),
    _aa("include-host-file", "#include </etc/shadow>", "include"),
    _aa("include-unspaced", "#include</etc/apparmor.d/usr.sbin.sshd>", "include"),
    _aa("include-quoted-host-file", 'include "/etc/apparmor.d/tunables/global"', "include"),
    _aa("include-escaping-abstractions", "#include <abstractions/../../etc/shadow>", "include"),
    _aa("nul-byte", "file,\x00", "control character"),
    _aa("escape-character", "file,\x1b[2J", "control character"),
    _aa("carriage-return", "file,\r", "control character"),
    _aa("delete-character", "file,\x7f", "control character"),
    _aa("c1-next-line", "file,\x85", "control character"),
    Injection("aa-rules-path-with-nul", apparmor("inject-g", rules={"filesystem": {"readOnlyPaths": ["/etc\x00"]}}),
              "spec.rules.filesystem.readOnlyPaths[0]", "should match", api=True),
    Injection("aa-rules-path-with-quote", apparmor("inject-h", rules={"executables": ['/bin/sh" ux, "/x']}),
              "spec.rules.executables[0]", "should match", api=True),
    # Seccomp: names and references built to leave <kubelet root>/seccomp/secprofiles/<namespace>/.
    Injection("sc-name-slash", seccomp("a/b"), "metadata.name", "RFC 1123", api=True),
    Injection("sc-name-dotdot", seccomp(".."), "metadata.name", "RFC 1123", api=True),
    Injection("sc-name-traversal", seccomp("../../../etc/passwd"), "metadata.name", "RFC 1123", api=True),
    Injection("sc-name-trailing-newline", seccomp("p\n"), "metadata.name", "RFC 1123", api=True),
    Injection("sc-name-too-long-for-a-file", seccomp("a" * 250), "metadata.name", "200", api=True),
    Injection("sc-namespace-traversal", seccomp("p", namespace="../kube-system"), "metadata.namespace", "namespace",
              api=True),
    Injection("sc-syscall-slash", seccomp("p", syscalls=_rules("../x")), "spec.syscalls[0].names[0]", "match",
              api=True),
    Injection("sc-syscall-path", seccomp("p", syscalls=_rules("a/b")), "spec.syscalls[0].names[0]", "match",
              api=True),
    Injection("sc-syscall-nul", seccomp("p", syscalls=_rules("chmod\x00")), "spec.syscalls[0].names[0]", "match",
              api=True),
    Injection("sc-base-traversal", seccomp("p", baseProfileName="bundled/../../../etc/passwd"),
              "spec.baseProfileName", "match", api=True),
    Injection("sc-base-relative", seccomp("p", baseProfileName="../runtime-default"), "spec.baseProfileName", "match",
              api=True),
    Injection("sc-base-absolute", seccomp("p", baseProfileName="/etc/passwd"), "spec.baseProfileName", "match",
              api=True),
    Injection("sc-base-missing-bundled", seccomp("inject-base", baseProfileName="bundled/etc"),
              "spec.baseProfileName", "not found", api=False),
    Injection("sc-unknown-syscall", seccomp("inject-unknown", syscalls=_rules("chmodat")),
              "spec.syscalls[0].names[0]", "unknown syscall", api=False),
]
