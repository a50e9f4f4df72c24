"""The RecordingReport contract: names, the operator's spec, the recorder's status, both directions."""

from __future__ import annotations

from secprofiles.model import schema
from secprofiles.recording.report import ContainerSyscalls, NodeReport, new_report, report_name, spec_pods

RECORDING = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileRecording",
             "metadata": {"name": "web", "namespace": "apps", "uid": "u-1"}, "spec": {"podSelector": {}}}


def test_names_fit_whatever_the_node_name() -> None:
    assert report_name("web", "node-1") == "web.node-1"
    long = report_name("r" * 180, "n" * 200)
    assert len(long) <= 253 and long == report_name("r" * 180, "n" * 200) != report_name("r" * 180, "m" * 200)


def test_a_new_report_is_owned_by_its_recording_and_valid() -> None:
    report = new_report(RECORDING, "node-1", {"b-uid": "web-b", "a-uid": "web-a"})
    assert report["metadata"]["ownerReferences"] == [{"apiVersion": "secprofiles.io/v1alpha1",
                                                      "kind": "ProfileRecording", "name": "web", "uid": "u-1"}]
    assert report["spec"] == {"recording": "web", "nodeName": "node-1",
                              "pods": [{"uid": "a-uid", "name": "web-a"}, {"uid": "b-uid", "name": "web-b"}]}
    assert schema.validate(report) == []
    assert spec_pods(report) == {"a-uid": "web-a", "b-uid": "web-b"}


def test_status_round_trip_is_deterministic_and_valid() -> None:
    containers = (ContainerSyscalls("p2", "c" * 64, {"SCMP_ARCH_X86_64": ["read", "write"]}),
                  ContainerSyscalls("p1", "d" * 64, {"SCMP_ARCH_X86_64": ["execve"]}, runtime="runc-1.1"))
    node = NodeReport(final=True, unattributed_records=3, architectures=("SCMP_ARCH_X86_64",), containers=containers)
    status = node.as_status()
    assert [c["podUID"] for c in status["containers"]] == ["p1", "p2"]
    assert status["error"] is None and status["incomplete"] is None  # a merge patch clears them
    parsed = NodeReport.from_status({k: v for k, v in status.items() if v is not None})
    assert parsed.final and parsed.unattributed_records == 3
    assert sorted(parsed.containers, key=lambda c: c.pod_uid) == sorted(containers, key=lambda c: c.pod_uid)
    report = new_report(RECORDING, "node-1", {})
    report["status"] = {k: v for k, v in status.items() if v is not None}
    assert schema.validate(report) == []


def test_malformed_status_reads_as_empty_parts() -> None:
    parsed = NodeReport.from_status({"containers": "nope", "architectures": 7, "unattributedRecords": "x"})
    assert parsed == NodeReport()
    assert NodeReport.from_status(None) == NodeReport()
