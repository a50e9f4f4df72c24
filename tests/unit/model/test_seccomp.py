from __future__ import annotations

import json

import pytest

from secprofiles.model import bundled, seccomp
from secprofiles.model.findings import InvalidProfileError


def no_profiles(namespace: str, name: str) -> None:
    return None


def render(spec: dict, lookup=no_profiles) -> dict:
    return json.loads(seccomp.render("team-a", "p", spec, bundled.with_bundled(lookup)).content)


def test_legacy_name_renders_as_names_and_rules_merge() -> None:
    spec = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"name": "fchmodat", "action": "SCMP_ACT_ERRNO"}, {"name": "chmod", "action": "SCMP_ACT_ERRNO"}]}
    assert render(spec) == {"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}


def test_rendering_is_deterministic_whatever_the_input_order() -> None:
    a = {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64"],
         "syscalls": [{"names": ["write", "read"], "action": "SCMP_ACT_ALLOW"},
                      {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]},
                      {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    b = {"syscalls": list(reversed([{**r, "names": list(reversed(r["names"]))} for r in a["syscalls"]])),
         "architectures": list(reversed(a["architectures"])), "defaultAction": "SCMP_ACT_ERRNO"}
    first = seccomp.render("ns", "p", a, no_profiles)
    second = seccomp.render("ns", "p", b, no_profiles)
    assert first.content == second.content
    assert first.content_hash == second.content_hash and first.content_hash.startswith("sha256:")
    assert b'"name"' not in first.content
    assert first.localhost_profile == "secprofiles/ns/p.json"


def test_base_profile_rules_merge_and_the_child_wins() -> None:
    base = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["chmod", "read"], "action": "SCMP_ACT_ALLOW"}],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"]}
    child = {"defaultAction": "SCMP_ACT_ERRNO", "baseProfileName": "base",
             "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
    out = render(child, lambda ns, n: base if (ns, n) == ("team-a", "base") else None)
    assert out["flags"] == ["SECCOMP_FILTER_FLAG_LOG"]
    assert out["syscalls"] == [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                               {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]


def test_bundled_runtime_default_base_resolves() -> None:
    out = render({"defaultAction": "SCMP_ACT_ERRNO", "baseProfileName": "bundled/runtime-default"})
    allowed = {n for r in out["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert {"read", "write", "execve", "chmod"} <= allowed
    assert bundled.seccomp_base("bundled/nope") is None


@pytest.mark.parametrize(("profiles", "words"), [
    ({"p": "a", "a": "p"}, "cycle: p -> a -> p"),
    ({"p": "missing"}, "'missing' (via 'p') not found in namespace 'team-a'"),
    ({"p": "bundled/missing"}, "not found bundled with secprofiles"),
    ({"p": "b0", **{f"b{i}": f"b{i + 1}" for i in range(12)}}, "deeper than 10"),
])
def test_bad_base_references_are_rejected(profiles: dict[str, str], words: str) -> None:
    specs = {name: {"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": base} for name, base in profiles.items()}
    specs.setdefault("b12", {"defaultAction": "SCMP_ACT_ALLOW"})
    with pytest.raises(InvalidProfileError) as error:
        render(specs["p"], lambda ns, n: specs.get(n))
    assert error.value.findings[0].field == "spec.baseProfileName"
    assert words in error.value.findings[0].message


def test_invalid_base_makes_the_child_invalid() -> None:
    base = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["nosuchcall"], "action": "SCMP_ACT_ERRNO"}]}
    with pytest.raises(InvalidProfileError, match="base profile 'b' is invalid"):
        render({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "b"}, lambda ns, n: base)


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod", "chmodat"], "action": "SCMP_ACT_ERRNO"}]},
     "spec.syscalls[0].names[1]", "unknown syscall 'chmodat'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"],
      "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}]},
     "spec.syscalls[0].names[0]", "not a syscall on SCMP_ARCH_AARCH64"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "nosuch", "action": "SCMP_ACT_ERRNO"}]},
     "spec.syscalls[0].name", "unknown syscall"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1}, "spec.defaultErrnoRet", "only valid"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_LOG", "errnoRet": 1}]},
     "spec.syscalls[0].errnoRet", "only valid"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "spec.defaultAction", "listenerPath"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO"},
                                                     {"names": ["chmod"], "action": "SCMP_ACT_LOG"}]},
     "spec.syscalls[1].names[0]", "one syscall, one action"),
])
def test_semantic_findings(spec: dict, field: str, words: str) -> None:
    findings = seccomp.check_spec(spec)
    assert any(f.field == field and words in f.message for f in findings), findings
    with pytest.raises(InvalidProfileError):
        seccomp.render("ns", "p", spec, no_profiles)
