"""ProfileRecording: schema and semantic findings naming fields, when a recording ends, the names it derives."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from secprofiles.model.evaluate import evaluate_sync
from secprofiles.model.recording import MAX_RECORDING_NAME, Recording, validate
from secprofiles.model.schema import with_defaults

CREATED = "2026-01-02T03:04:05Z"


def recording(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileRecording",
            "metadata": {"name": name, "namespace": "apps", "uid": "u-1", "creationTimestamp": CREATED},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, **spec}}


def test_a_minimal_recording_is_valid_and_gets_the_defaults() -> None:
    obj = recording()
    assert validate(obj) == []
    spec = with_defaults("ProfileRecording", obj)["spec"]
    assert (spec["kind"], spec["mergeStrategy"], spec["defaultAction"], spec["stop"]) == (
        "SeccompProfile", "ByContainerName", "SCMP_ACT_ERRNO", False)


@pytest.mark.parametrize(("obj", "field", "message"), [
    (recording(kind="AppArmorProfile"), "spec.kind", "unsupported value 'AppArmorProfile'"),
    ({**recording(), "spec": {}}, "spec.podSelector", "required field is missing"),
    (recording(podSelector={}), "spec.podSelector", "must select by at least one label"),
    (recording(podSelector={"matchExpressions": [{"key": "app", "operator": "In"}]}),
     "spec.podSelector.matchExpressions[0].values", "required for operator In"),
    (recording(podSelector={"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}),
     "spec.podSelector.matchExpressions[0].values", "must be empty for operator Exists"),
    (recording(containers=["app", "app"]), "spec.containers[1]", "duplicate container name 'app'"),
    (recording(containers=["Bad_Name"]), "spec.containers[0]", "must match"),
    (recording(mergeStrategy="PerNode"), "spec.mergeStrategy", "unsupported value"),
    (recording(defaultAction="SCMP_ACT_ALLOW"), "spec.defaultAction", "unsupported value"),
    (recording(durationSeconds=0), "spec.durationSeconds", "less than the minimum 1"),
    (recording(durationSeconds=10**7), "spec.durationSeconds", "greater than the maximum"),
    (recording(stop="yes"), "spec.stop", "must be of type boolean"),
    (recording("r" * (MAX_RECORDING_NAME + 1)), "metadata.name", f"at most {MAX_RECORDING_NAME} characters"),
    (recording(unknown=1), "spec.unknown", "unknown field"),
])
def test_bad_recordings_name_the_field(obj: dict[str, Any], field: str, message: str) -> None:
    findings = validate(obj)
    assert any(f.field == field and message in f.message for f in findings), findings
    assert evaluate_sync(obj).findings == tuple(findings)  # lint's path: the same findings


def test_when_a_recording_ends() -> None:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    running = Recording.from_object(recording(durationSeconds=60))
    assert running.created == created and running.deadline == created + dt.timedelta(seconds=60)
    assert running.ended(created + dt.timedelta(seconds=59)) is None
    assert running.ended(created + dt.timedelta(seconds=60)) == "spec.durationSeconds"
    assert Recording.from_object(recording(stop=True)).ended(created) == "spec.stop"
    deleted = recording()
    deleted["metadata"]["deletionTimestamp"] = CREATED
    assert Recording.from_object(deleted).ended(created) == "deleted"
    assert Recording.from_object(recording()).ended(created + dt.timedelta(days=3650)) is None


def test_derived_names() -> None:
    by_name = Recording.from_object(recording(containers=["app"]))
    assert by_name.logging_profile == "web.log"
    assert by_name.profile_name("app", "web-7d9f-x") == "web-app"
    assert by_name.records_container("app") and not by_name.records_container("sidecar")
    assert Recording.from_object(recording()).records_container("sidecar")
    by_pod = Recording.from_object(recording(mergeStrategy="ByPod"))
    assert by_pod.profile_name("app", "web-7d9f-x") == "web-web-7d9f-x-app"
    long = by_pod.profile_name("c" * 63, "p" * 253)
    assert len(long) <= 253 and long == by_pod.profile_name("c" * 63, "p" * 253) != by_pod.profile_name("c" * 63, "q" * 253)
