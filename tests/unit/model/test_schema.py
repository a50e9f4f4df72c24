from __future__ import annotations

import pytest

from secprofiles.model import schema


@pytest.mark.parametrize("kind", sorted(schema.crds()))
def test_every_crd_is_complete(kind: str) -> None:
    crd = schema.crd_for(kind)
    (version,) = crd["spec"]["versions"]
    assert crd["spec"]["group"] == "secprofiles.io"
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    if "status" in version["schema"]["openAPIV3Schema"]["properties"]:  # Guardrail has none: nobody writes one
        assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"]
    assert len(version["additionalPrinterColumns"]) >= 3
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def undocumented(node: dict, path: str) -> list[str]:
        missing = [] if "description" in node else [path]
        for name, sub in node.get("properties", {}).items():
            missing += undocumented(sub, f"{path}.{name}")
        if node.get("items", {}).get("properties"):
            missing += [m for m in undocumented(node["items"], f"{path}[]") if m != f"{path}[]"]
        return missing

    assert undocumented(spec, "spec") == []


def test_all_seven_kinds_are_defined() -> None:
    assert set(schema.crds()) == {"SeccompProfile", "AppArmorProfile", "ProfileBinding", "NodeProfileStatus",
                                  "Guardrail", "ProfileRecording", "RecordingReport"}
    assert schema.is_namespaced("SeccompProfile") and not schema.is_namespaced("AppArmorProfile")
    assert not schema.is_namespaced("Guardrail")


def test_enumerations_match_the_platform_facts() -> None:
    assert schema.enum_of("SeccompProfile", "spec", "defaultAction") == [
        "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY"]
    assert schema.enum_of("SeccompProfile", "spec", "syscalls", "[]", "args", "[]", "op") == [
        "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ"]
    assert schema.enum_of("SeccompProfile", "spec", "flags", "[]") == [
        "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]


def seccomp(spec: dict) -> dict:
    return {"apiVersion": schema.API_VERSION, "kind": "SeccompProfile", "metadata": {"name": "p"}, "spec": spec}


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({}, "spec.defaultAction", "required"),
    ({"defaultAction": "SCMP_ACT_NOPE"}, "spec.defaultAction", "allowed: SCMP_ACT_KILL"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]},
     "spec.syscalls[0]", "exactly one of: names, name"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["../x"], "action": "SCMP_ACT_ERRNO"}]},
     "spec.syscalls[0].names[0]", "must match"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}]},
     "spec.syscalls[0].args[0].index", "greater than the maximum 5"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "defaultaction": "x"}, "spec.defaultaction", "unknown field"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "../../etc"}, "spec.baseProfileName", "must match"),
])
def test_schema_findings_name_the_field(spec: dict, field: str, words: str) -> None:
    findings = schema.validate(seccomp(spec))
    assert any(f.field == field and words in f.message for f in findings), findings


def test_unknown_kind_is_reported() -> None:
    (finding,) = schema.validate({"apiVersion": "secprofiles.io/v1alpha1", "kind": "Nope"})
    assert finding.field == "kind" and "unknown kind" in finding.message


def test_defaults_come_from_the_schema() -> None:
    obj = schema.with_defaults("AppArmorProfile", {"spec": {"policy": "x"}})
    assert obj["spec"]["mode"] == "enforce"
