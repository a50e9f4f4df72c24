"""The pod-binding decision: matching, precedence, override rules, warnings, enforcement, annotation format."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from secprofiles.controller.admission.binding import (
    APPARMOR,
    PROFILES_ANNOTATION,
    SECCOMP,
    Binding,
    ProfileInfo,
    apply_patch,
    decide,
    problem,
    selector_matches,
)

NS = "team-a"
READY = ProfileInfo("Installed", "sha256:aaa")
PROFILES = {"seccomp/team-a/no-chmod": READY, "apparmor/readonly": ProfileInfo("Installed", "sha256:bbb"),
            "seccomp/team-a/other": ProfileInfo("Installed", "sha256:ccc"),
            "seccomp/team-a/installing": ProfileInfo("Installing", "sha256:ddd")}


def pod(*containers: dict[str, Any], labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, init: list[dict[str, Any]] | None = None,
        pod_context: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "namespace": NS, "labels": labels or {}}
    if annotations is not None:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"containers": list(containers or [{"name": "app", "image": "nginx:1.27"}])}
    if init:
        spec["initContainers"] = init
    if pod_context:
        spec["securityContext"] = pod_context
    return {"metadata": meta, "spec": spec}


def binding(name: str = "b", kind: str = SECCOMP, profile: str = "no-chmod", **spec: Any) -> Binding:
    return Binding.from_object({"metadata": {"name": name, "namespace": NS},
                                "spec": {"profileRef": {"kind": kind, "name": profile}, **spec}})


def mutated(obj: dict[str, Any], bindings: list[Binding], field: bool = True) -> tuple[dict[str, Any], Any]:
    decision = decide(obj, bindings, PROFILES, field)
    result = copy.deepcopy(obj)
    apply_patch(result, decision.patch)
    return result, decision


SECCOMP_LOCALHOST = {"type": "Localhost", "localhostProfile": "secprofiles/team-a/no-chmod.json"}


def test_binds_by_image_glob_only_matching_containers() -> None:
    obj = pod({"name": "web", "image": "docker.io/library/nginx:1.27"}, {"name": "side", "image": "busybox"})
    result, decision = mutated(obj, [binding(images=["*/nginx:*"])])
    assert result["spec"]["containers"][0]["securityContext"] == {"seccompProfile": SECCOMP_LOCALHOST}
    assert "securityContext" not in result["spec"]["containers"][1]
    assert json.loads(result["metadata"]["annotations"][PROFILES_ANNOTATION]) == {
        "web": ["SeccompProfile/team-a/no-chmod@sha256:aaa"]}
    assert decision.bound == {"team-a/b"} and decision.warnings == [] and decision.rejection is None


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    ({"matchLabels": {"app": "web"}}, {"app": "web"}, True),
    ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}, {"tier": "front"}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, {"tier": "front"}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}, {}, True),
    ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {}, True),
    ({}, {"x": "y"}, True),
    (None, {}, True),
])
def test_selector(selector: dict[str, Any] | None, labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


def test_binds_by_label_and_container_names_including_init_containers() -> None:
    obj = pod({"name": "app", "image": "x"}, {"name": "side", "image": "y"}, labels={"app": "web"},
              init=[{"name": "setup", "image": "z"}])
    b = binding(selector={"matchLabels": {"app": "web"}}, containers=["setup", "app"])
    result, _ = mutated(obj, [b])
    assert result["spec"]["initContainers"][0]["securityContext"]["seccompProfile"] == SECCOMP_LOCALHOST
    assert result["spec"]["containers"][0]["securityContext"]["seccompProfile"] == SECCOMP_LOCALHOST
    assert "securityContext" not in result["spec"]["containers"][1]
    assert mutated(pod(labels={"app": "db"}), [b])[1].patch == []


def test_apparmor_field_or_annotation_by_server_version() -> None:
    b = binding(kind=APPARMOR, profile="readonly", images=["*"])
    result, _ = mutated(pod(), [b], field=True)
    assert result["spec"]["containers"][0]["securityContext"] == {
        "appArmorProfile": {"type": "Localhost", "localhostProfile": "readonly"}}
    result, _ = mutated(pod(), [b], field=False)
    assert "securityContext" not in result["spec"]["containers"][0]
    annotations = result["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/app"] == "localhost/readonly"
    assert json.loads(annotations[PROFILES_ANNOTATION]) == {"app": ["AppArmorProfile/readonly@sha256:bbb"]}


def test_both_kinds_on_one_container_keep_other_security_context_fields() -> None:
    obj = pod({"name": "app", "image": "nginx", "securityContext": {"runAsNonRoot": True}}, annotations={"a": "b"})
    result, _ = mutated(obj, [binding(images=["nginx"]), binding("aa", APPARMOR, "readonly", images=["*"])])
    assert result["spec"]["containers"][0]["securityContext"] == {
        "runAsNonRoot": True, "seccompProfile": SECCOMP_LOCALHOST,
        "appArmorProfile": {"type": "Localhost", "localhostProfile": "readonly"}}
    assert result["metadata"]["annotations"]["a"] == "b"
    assert json.loads(result["metadata"]["annotations"][PROFILES_ANNOTATION]) == {
        "app": ["SeccompProfile/team-a/no-chmod@sha256:aaa", "AppArmorProfile/readonly@sha256:bbb"]}


def test_pod_annotation_opt_in() -> None:
    obj = pod(annotations={"secprofiles.io/seccomp-profile": "no-chmod",
                           "secprofiles.io/apparmor-profile": "readonly"})
    result, decision = mutated(obj, [])
    context = result["spec"]["containers"][0]["securityContext"]
    assert context["seccompProfile"] == SECCOMP_LOCALHOST
    assert context["appArmorProfile"]["localhostProfile"] == "readonly"
    assert decision.bound == set()


def test_explicit_profile_kept_with_warning_unless_override() -> None:
    explicit = {"name": "app", "image": "nginx", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}
    result, decision = mutated(pod(explicit), [binding(images=["*"])])
    assert decision.patch == [] and decision.bound == set()
    assert decision.warnings == ["container app: keeps its seccomp profile RuntimeDefault; ProfileBinding b not applied"]
    result, decision = mutated(pod(explicit), [binding(images=["*"], overrideExisting=True)])
    assert result["spec"]["containers"][0]["securityContext"]["seccompProfile"] == SECCOMP_LOCALHOST
    assert "replaced by ProfileBinding b (overrideExisting)" in decision.warnings[0]


def test_pod_level_profile_counts_as_explicit() -> None:
    _, decision = mutated(pod(pod_context={"seccompProfile": {"type": "Unconfined"}}), [binding(images=["*"])])
    assert decision.patch == [] and "keeps its seccomp profile Unconfined" in decision.warnings[0]


def test_same_profile_already_set_is_no_conflict() -> None:
    obj = pod({"name": "app", "image": "nginx", "securityContext": {"seccompProfile": SECCOMP_LOCALHOST}})
    result, decision = mutated(obj, [binding(images=["*"])])
    assert decision.warnings == [] and decision.bound == set()  # nothing changed: not counted again
    assert PROFILES_ANNOTATION in result["metadata"]["annotations"]


def test_precedence_override_binding_then_annotation_then_bindings_by_name() -> None:
    obj = pod(annotations={"secprofiles.io/seccomp-profile": "other"})
    result, decision = mutated(obj, [binding("a", images=["*"])])
    assert result["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"].endswith(
        "/other.json")
    assert decision.warnings == ["container app: ProfileBinding a ignored, annotation "
                                 "secprofiles.io/seccomp-profile takes precedence"]
    result, _ = mutated(obj, [binding("z", images=["*"], overrideExisting=True)])
    assert result["spec"]["containers"][0]["securityContext"]["seccompProfile"] == SECCOMP_LOCALHOST
    result, _ = mutated(pod(), [binding("b2", profile="other", images=["*"]), binding("b1", images=["*"])])
    assert result["spec"]["containers"][0]["securityContext"]["seccompProfile"] == SECCOMP_LOCALHOST


@pytest.mark.parametrize("profile", ["missing", "installing"])
def test_not_ready_profile_warn_admits_unchanged(profile: str) -> None:
    obj = pod(annotations={PROFILES_ANNOTATION: "forged"})
    result, decision = mutated(obj, [binding(profile=profile, images=["*"])])
    assert "securityContext" not in result["spec"]["containers"][0]
    assert PROFILES_ANNOTATION not in result["metadata"]["annotations"]  # a forged claim is removed
    assert decision.rejection is None and len(decision.warnings) == 1
    assert decision.warnings[0].startswith(f"ProfileBinding b: SeccompProfile team-a/{profile} ")
    assert decision.warnings[0].endswith("; pod admitted without it")


def test_not_ready_profile_reject() -> None:
    decision = decide(pod(), [binding(profile="installing", images=["*"], enforcement="Reject")], PROFILES, True)
    assert decision.patch == []
    assert decision.rejection == ("ProfileBinding b: SeccompProfile team-a/installing is Installing, "
                                  "not Installed on every node (enforcement: Reject)")


def test_binding_that_matches_no_container_never_warns_or_rejects() -> None:
    b = binding(profile="missing", images=["redis*"], enforcement="Reject")
    decision = decide(pod(), [b], PROFILES, True)
    assert decision.rejection is None and decision.warnings == [] and decision.patch == []


def test_bindings_of_other_namespaces_are_ignored() -> None:
    other = Binding("team-b", "b", SECCOMP, "no-chmod", images=("*",))
    assert decide(pod(), [other], PROFILES, True).patch == []


def test_apparmor_field_replaces_a_conflicting_annotation_on_override() -> None:
    key = "container.apparmor.security.beta.kubernetes.io/app"
    obj = pod(annotations={key: "runtime/default"})
    b = binding(kind=APPARMOR, profile="readonly", images=["*"], overrideExisting=True)
    result, decision = mutated(obj, [b])
    assert key not in result["metadata"]["annotations"]
    assert "AppArmor profile RuntimeDefault replaced" in decision.warnings[0]


def test_problem_reporting() -> None:
    assert problem(binding(profile="missing"), PROFILES) == "SeccompProfile team-a/missing not found"
    assert problem(binding(), PROFILES) is None
    deleting = {"apparmor/x": ProfileInfo("Installed", "sha256:1", deleting=True)}
    assert problem(binding(kind=APPARMOR, profile="x"), deleting) == "AppArmorProfile x is being deleted"
