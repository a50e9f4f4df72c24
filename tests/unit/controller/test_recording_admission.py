"""The webhook's recording decision: which pods are put on a recording's logging profile, refused, or left alone."""

from __future__ import annotations

from typing import Any

import pytest

from secprofiles.controller.admission.binding import ProfileInfo, apply_patch
from secprofiles.controller.admission.recording import decide
from secprofiles.model.recording import Recording

READY = ProfileInfo("Installed", "sha256:1")
LOG = {"type": "Localhost", "localhostProfile": "secprofiles/apps/web.log.json"}


def recording(name: str = "web", **spec: Any) -> Recording:
    return Recording.from_object({"metadata": {"name": name, "namespace": "apps", "uid": "u"},
                                  "spec": {"podSelector": {"matchLabels": {"app": "web"}}, **spec}})


def pod(*containers: dict[str, Any], labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "apps", "labels": labels or {"app": "web"}},
            "spec": {"containers": list(containers) or [{"name": "app", "image": "x"}], **spec}}


def profiles(*names: str, info: ProfileInfo = READY) -> dict[str, ProfileInfo]:
    return {f"seccomp/apps/{name}": info for name in names}


def patched(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    apply_patch(obj, ops)
    return obj


def test_a_selected_pod_is_put_on_the_logging_profile_and_marked() -> None:
    obj = pod({"name": "app", "image": "x"}, {"name": "side", "image": "y", "securityContext": {"runAsUser": 1}},
              initContainers=[{"name": "init", "image": "z"}])
    decision = decide(obj, [recording()], profiles("web.log"))
    assert decision.recording == "web" and not decision.warnings and decision.rejection is None
    result = patched(obj, decision.patch)
    assert decision.pod == result
    assert [c["securityContext"] for c in result["spec"]["containers"]] == [
        {"seccompProfile": LOG}, {"runAsUser": 1, "seccompProfile": LOG}]
    assert result["spec"]["initContainers"][0]["securityContext"] == {"seccompProfile": LOG}
    assert result["metadata"]["annotations"] == {"secprofiles.io/recording": "web"}


def test_only_the_named_containers_are_recorded() -> None:
    obj = pod({"name": "app", "image": "x"}, {"name": "side", "image": "y"})
    result = patched(obj, decide(obj, [recording(containers=["side"])], profiles("web.log")).patch)
    assert "securityContext" not in result["spec"]["containers"][0]
    assert result["spec"]["containers"][1]["securityContext"] == {"seccompProfile": LOG}


@pytest.mark.parametrize(("obj", "field"), [
    (pod({"name": "app", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}}),
     "spec.containers[0].securityContext.seccompProfile"),
    (pod(securityContext={"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}),
     "spec.securityContext.seccompProfile"),
])
def test_a_pod_with_its_own_localhost_profile_is_refused_naming_the_field(obj: dict[str, Any], field: str) -> None:
    decision = decide(obj, [recording()], profiles("web.log"))
    assert decision.rejection is not None and decision.rejection.startswith(field + ": ProfileRecording web")
    assert "x.json" in decision.rejection


def test_runtime_default_is_replaced_with_a_warning_and_privileged_containers_are_not_recorded() -> None:
    obj = pod({"name": "app", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}},
              {"name": "root", "securityContext": {"privileged": True}})
    decision = decide(obj, [recording()], profiles("web.log"))
    result = patched(obj, decision.patch)
    assert result["spec"]["containers"][0]["securityContext"] == {"seccompProfile": LOG}
    assert result["spec"]["containers"][1]["securityContext"] == {"privileged": True}
    assert any("RuntimeDefault replaced" in w for w in decision.warnings)
    assert any("root is privileged" in w for w in decision.warnings)


def test_unselected_pods_are_untouched_and_lose_a_forged_mark() -> None:
    other = pod(labels={"app": "db"})
    assert decide(other, [recording()], profiles("web.log")).patch == []
    forged = pod(labels={"app": "db"})
    forged["metadata"]["annotations"] = {"secprofiles.io/recording": "web", "keep": "me"}
    result = patched(forged, decide(forged, [recording()], profiles("web.log")).patch)
    assert result["metadata"]["annotations"] == {"keep": "me"}


@pytest.mark.parametrize("info", [None, ProfileInfo("Installing", "sha256:1"), ProfileInfo("Installed", None)])
def test_without_an_installed_logging_profile_the_pod_is_admitted_unrecorded(info: ProfileInfo | None) -> None:
    obj = pod()
    decision = decide(obj, [recording()], {} if info is None else profiles("web.log", info=info))
    assert decision.recording is None and decision.patch == [] and decision.rejection is None
    assert "pod admitted without recording" in decision.warnings[0]


def test_the_first_of_several_matching_recordings_records_it() -> None:
    decision = decide(pod(), [recording("zeta"), recording("alpha")], profiles("alpha.log", "zeta.log"))
    assert decision.recording == "alpha"
    assert decision.warnings == ["ProfileRecording zeta also selects this pod; ProfileRecording alpha records it"]


def test_a_reinvocation_changes_nothing() -> None:
    obj = pod()
    first = patched(obj, decide(obj, [recording()], profiles("web.log")).patch)
    again = decide(first, [recording()], profiles("web.log"))
    assert again.recording == "web" and again.patch == [] and again.pod is None
