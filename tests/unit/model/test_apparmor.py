from __future__ import annotations

import asyncio

import pytest

from secprofiles.model import apparmor, apparmor_parser
from tests.conftest import SEEDS, needs_apparmor_parser

NAME = "k8s-apparmor-example-deny-write"
DENY_WRITE = (SEEDS / "deny-write.profile").read_text()


def policy_obj(policy: str, name: str = NAME, mode: str = "enforce") -> dict:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "AppArmorProfile", "metadata": {"name": name},
            "spec": {"mode": mode, "policy": policy}}


def test_source_document_example_is_valid() -> None:
    assert apparmor.validate(policy_obj(DENY_WRITE)) == []


HOSTILE = {
    "host profile name cri-containerd": (DENY_WRITE.replace(NAME, "cri-containerd.apparmor.d"), "cri-containerd.apparmor.d", "metadata.name"),
    "host profile name docker-default": (DENY_WRITE.replace(NAME, "docker-default"), "docker-default", "metadata.name"),
    "profile named unconfined": (DENY_WRITE.replace(NAME, "unconfined"), "unconfined", "metadata.name"),
    "absolute path profile": (DENY_WRITE.replace(f"profile {NAME}", "/usr/sbin/sshd"), NAME, "named exactly"),
    "second profile": (DENY_WRITE + "profile other {\n}\n", NAME, "profiles"),
    "name differs": (DENY_WRITE.replace(NAME, "something-else"), NAME, "must be named exactly"),
    "top-level hat": (DENY_WRITE + "^sneaky {\n}\n", NAME, "top-level hat"),
    "unconfined child": (DENY_WRITE.replace("file,", "profile child flags=(unconfined) {\n  }"), NAME,
                         "flag 'unconfined'"),
    "change_profile to unconfined": (DENY_WRITE.replace("file,", "change_profile -> unconfined,"), NAME, "change_profile"),
    "px to other profile": (DENY_WRITE.replace("file,", "/bin/sh px -> docker-default,"), NAME, "exec transition"),
    "Px to matching profile": (DENY_WRITE.replace("file,", "/usr/bin/** Px,"), NAME, "exec transition"),
    "cx to another profile's child": (DENY_WRITE.replace("file,", "/bin/sh cx -> other//child,"), NAME,
                                      "Cx names a child"),
    "split px rule": (DENY_WRITE.replace("file,", "/bin/sh\n    px,"), NAME, "exec transition"),
    "unconfined exec": (DENY_WRITE.replace("file,", "/bin/sh ux,"), NAME, "unconfined execution"),
    "include of host file": (DENY_WRITE.replace("#include <abstractions/base>", "#include </etc/shadow>"), NAME, "include"),
    "quoted include": (DENY_WRITE.replace("#include <abstractions/base>", '#include "/etc/apparmor.d/x"'), NAME, "include"),
    "relative include": (DENY_WRITE.replace("#include <abstractions/base>", "include local/foo"), NAME, "include"),
    "include escaping abstractions": (DENY_WRITE.replace("<abstractions/base>", "<abstractions/../../etc/shadow>"), NAME, "include"),
    "NUL byte": (DENY_WRITE.replace("file,", "file,\x00"), NAME, "control character"),
    "escape character": (DENY_WRITE.replace("file,", "file,\x1b[2J"), NAME, "control character"),
    "unconfined flag": (DENY_WRITE.replace("attach_disconnected", "unconfined"), NAME, "flag 'unconfined'"),
    "complain flag against enforce mode": (DENY_WRITE.replace("attach_disconnected", "complain"), NAME, "contradicts"),
    "attachment path": (DENY_WRITE.replace("flags=", "/usr/bin/** flags="), NAME, "attachment"),
    "oversized": (DENY_WRITE + "#" * 70000, NAME, "65536"),
    "no profile": ("#include <tunables/global>\n", NAME, "defines no profile"),
    "unbalanced": (DENY_WRITE.replace("}", ""), NAME, "unbalanced"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_policy_is_rejected_with_field_and_reason(case: str) -> None:
    policy, name, words = HOSTILE[case]
    findings = apparmor.validate(policy_obj(policy, name))
    assert findings, case
    assert all(f.field in ("spec.policy", "metadata.name") for f in findings)
    assert any(words in str(f) for f in findings), findings


def test_exec_transition_to_itself_is_allowed() -> None:
    policy = DENY_WRITE.replace("file,", f"file,\n  /bin/sh px -> {NAME},\n  /bin/ls ix,")
    assert apparmor.check_policy(NAME, policy) == []


def test_mode_changes_the_rendered_bytes() -> None:
    enforce = apparmor.render(policy_obj(DENY_WRITE))
    complain = apparmor.render(policy_obj(DENY_WRITE, mode="complain"))
    assert complain.complain and not enforce.complain
    assert enforce.content_hash != complain.content_hash
    assert enforce.localhost_profile == NAME




@needs_apparmor_parser
def test_parser_compiles_the_source_example() -> None:
    rendered = apparmor.render(policy_obj(DENY_WRITE))
    assert asyncio.run(apparmor_parser.check(rendered.content, NAME)) == []


@needs_apparmor_parser
def test_parser_rejects_bad_syntax_with_its_message() -> None:
    rendered = apparmor.render(policy_obj(DENY_WRITE.replace("deny /** w,", "deny /** wq,")))
    (finding,) = asyncio.run(apparmor_parser.check(rendered.content, NAME))
    assert finding.field == "spec.policy" and "apparmor_parser rejected" in finding.message


@needs_apparmor_parser
def test_parser_names_check_catches_what_the_lexer_might_miss() -> None:
    text = (DENY_WRITE + "profile other {\n}\n").encode()  # the parser is asked even if the checks were fooled
    (finding,) = asyncio.run(apparmor_parser.check(text, NAME))
    assert "other" in finding.message and "only its own children" in finding.message


@needs_apparmor_parser
def test_parser_names_check_accepts_children_and_hats() -> None:
    text = DENY_WRITE.replace("file,", "file,\n  ^hat { }\n  profile child { }").encode()
    assert asyncio.run(apparmor_parser.check(text, NAME)) == []


@needs_apparmor_parser
def test_structured_rules_compile() -> None:
    obj = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "AppArmorProfile", "metadata": {"name": "web"},
           "spec": {"rules": {"filesystem": {"readOnlyPaths": ["/etc/**", "@{HOME}/x"], "writablePaths": ["/tmp/**"],
                                             "deniedPaths": ["/proc/sys/**"]},
                              "network": {"families": ["inet", "unix"]}, "capabilities": ["chown"],
                              "executables": ["/bin/busybox"]}}}
    assert apparmor.validate(obj) == []
    rendered = apparmor.render(obj)
    assert b"profile web flags=" in rendered.content
    assert asyncio.run(apparmor_parser.check(rendered.content, "web")) == []
