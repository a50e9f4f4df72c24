"""Migration from the Security Profiles Operator: every field mapped or named in a note, over small cases of
this project's own and over the SPO resources of ../shared/corpus (every version, both API groups)."""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from secprofiles.cli import importer, spo
from secprofiles.cli import main as cli
from secprofiles.model import schema
from secprofiles.model.evaluate import evaluate_sync
from tests.conftest import CORPUS, needs_corpus

SPO = "security-profiles-operator.x-k8s.io"


def seccomp(version: str = "v1", group: str = SPO, **spec: object) -> dict[str, object]:
    return {"apiVersion": f"{group}/{version}", "kind": "SeccompProfile",
            "metadata": {"name": "demo", "namespace": "theirs", "labels": {"spo.x-k8s.io/profile-id": "x", "app": "a"},
                         "annotations": {"description": "d"}, "uid": "1"},
            "spec": {"defaultAction": "SCMP_ACT_ERRNO", **spec}}


@pytest.mark.parametrize(("version", "group"), [("v1", SPO), ("v1beta1", SPO), ("v1alpha1", SPO),
                                                ("v1alpha1", "seccomp-operator.x-k8s.io")])
def test_seccomp_profiles_of_every_version_map_field_by_field(version: str, group: str) -> None:
    result = spo.migrate(seccomp(version, group, architectures=["SCMP_ARCH_X86_64"], targetWorkload="w",
                                 syscalls=[{"names": ["read", "vm86"], "action": "SCMP_ACT_ALLOW"},
                                           {"names": ["write"]}],
                                 baseProfileName="runc-v1.0.0", unknownField=1), namespace=None)
    obj = result.obj
    assert obj["apiVersion"] == schema.API_VERSION and obj["kind"] == "SeccompProfile"
    assert obj["metadata"] == {"name": "demo", "namespace": "theirs", "labels": {"app": "a"},
                               "annotations": {"description": "d"}}
    assert obj["spec"] == {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                           "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}],
                           "baseProfileName": "runc-v1.0.0"}
    notes = "\n".join(result.notes)
    for words in ("spec.targetWorkload", "spec.syscalls[0].names: dropped names that are not a syscall on "
                  "SCMP_ARCH_X86_64: vm86", "spec.syscalls[1]: a rule without an action", "spec.unknownField",
                  "metadata.uid", "spo.x-k8s.io/profile-id", "spec.baseProfileName", "localhostProfile operator/"):
        assert words in notes, words


def test_namespace_is_chosen_by_the_flag_and_required_for_cluster_scoped_objects() -> None:
    obj = seccomp()
    del obj["metadata"]["namespace"]  # type: ignore[attr-defined]
    with pytest.raises(importer.UnsupportedInputError, match=r"metadata.namespace: .*--namespace"):
        spo.migrate(obj, None)
    assert spo.migrate(obj, "apps").obj["metadata"]["namespace"] == "apps"
    moved = spo.migrate(seccomp(), "apps")
    assert moved.obj["metadata"]["namespace"] == "apps" and any("replaced by --namespace" in n for n in moved.notes)


def test_apparmor_abstract_maps_to_rules_and_says_what_it_widens() -> None:
    obj = {"apiVersion": f"{SPO}/v1", "kind": "AppArmorProfile",
           "metadata": {"name": "docker-web", "namespace": "spo"},
           "spec": {"mode": "Complain", "abstract": {
               "filesystem": {"readOnlyPaths": ["/etc/**", "/etc/**"], "writeOnlyPaths": ["/var/log/x"],
                              "readWritePaths": ["ptrace (read),\n# injected", "/tmp/**"]},
               "executable": {"allowedExecutables": ["/bin/web"], "allowedLibraries": ["/lib/libc.so.6"]},
               "capability": {"allowedCapabilities": ["net_bind_service", "CAP_CHOWN", "nonsense"]},
               "network": {"allowedProtocols": {"allowTcp": True}}}}}
    result = spo.migrate(obj, "ignored")
    assert result.obj["metadata"] == {"name": "imported-docker-web"}
    assert result.obj["spec"] == {"mode": "complain", "rules": {
        "filesystem": {"readOnlyPaths": ["/etc/**"], "writablePaths": ["/tmp/**", "/var/log/x"]},
        "executables": ["/bin/web", "/lib/libc.so.6"], "capabilities": ["chown", "net_bind_service"],
        "network": {"families": ["inet", "inet6"]}}}
    notes = "\n".join(result.notes)
    for words in ("readOnlyPaths[1]", "readWritePaths[0]: 'ptrace (read),\\n# injected' is not a path",
                  "writeOnlyPaths: widened", "allowedLibraries: mapped to executables", "allowedCapabilities[2]",
                  "TCP/UDP widened", "reserved", "cluster-scoped"):
        assert words in notes, words
    assert evaluate_sync(result.obj, native_checks=False).findings == ()


def test_apparmor_raw_policy_is_imported_like_a_profile_file() -> None:
    policy = "#include <tunables/global>\nprofile other-name /usr/bin/x flags=(complain) {\n  /x r,\n}\n"
    result = spo.migrate({"apiVersion": f"{SPO}/v1alpha1", "kind": "AppArmorProfile", "metadata": {"name": "p"},
                          "spec": {"policy": policy}}, None)
    assert result.obj["spec"]["mode"] == "complain"
    assert "profile p {" in result.obj["spec"]["policy"]
    assert any(n.startswith("spec.policy: line 2: renamed profile 'other-name'") for n in result.notes)


def test_bindings_select_by_image_in_the_chosen_namespace() -> None:
    binding = {"apiVersion": f"{SPO}/v1alpha1", "kind": "ProfileBinding", "metadata": {"name": "b"},
               "spec": {"profileRef": {"kind": "SeccompProfile", "name": "p"}, "image": "nginx:*"}}
    result = spo.migrate(binding, "apps")
    assert result.obj["spec"] == {"profileRef": {"kind": "SeccompProfile", "name": "p"}, "images": ["nginx:*"]}
    assert schema.validate(result.obj) == []
    selinux = {**binding, "spec": {"profileRef": {"kind": "SelinuxProfile", "name": "p"}, "image": "x"}}
    with pytest.raises(importer.UnsupportedInputError, match=r"spec\.profileRef\.kind"):
        spo.migrate(selinux, "apps")


def test_what_cannot_be_mapped_at_all_is_named_and_not_written() -> None:
    text = yaml.safe_dump_all([
        {"apiVersion": f"{SPO}/v1", "kind": "SelinuxProfile", "metadata": {"name": "s"}},
        {**seccomp(), "spec": {"defaultAction": "SCMP_ACT_ERRNO", "disabled": True}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
        seccomp()])
    migration = spo.migrate_text(text, None)
    assert [r.obj["metadata"]["name"] for r in migration.imported] == ["demo"]
    assert len(migration.skipped) == 3
    assert "no counterpart" in migration.skipped[0] and "spec.disabled" in migration.skipped[1]
    assert "not a Security Profiles Operator resource" in migration.skipped[2]


@needs_corpus
def test_spo_corpus_of_every_version_imports_and_lints(tmp_path: Path, report_figure: Callable[[str], None]) -> None:
    files = sorted((CORPUS / "spo").iterdir())
    versions: set[str] = set()
    clean_files, refused, objects = 0, {}, 0
    for path in files:
        versions |= {f"{d['apiVersion']} {d['kind']}" for d in yaml.safe_load_all(path.read_text()) if d}
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(["import", str(path), "--namespace", "migrated"])
        assert "Traceback" not in err.getvalue()
        docs = [d for d in yaml.safe_load_all(out.getvalue()) if d]
        objects += len(docs)
        assert docs and all(d["apiVersion"] == schema.API_VERSION for d in docs), path
        if code == 0:
            clean_files += 1
        else:
            refused[path.name] = [line for line in err.getvalue().splitlines() if not line.startswith("note:")]
    report_figure(f"SPO corpus: {clean_files} of {len(files)} files import and lint clean ({objects} objects "
                  f"written); refused: " + "; ".join(f"{k}: {v[0]}" for k, v in refused.items()))
    assert {v.split()[0] for v in versions} == {f"{SPO}/v1", f"{SPO}/v1beta1", f"{SPO}/v1alpha1",
                                                "seccomp-operator.x-k8s.io/v1alpha1"}
    # What remains: a seccomp agent (NOTIFY) and a base profile SPO keeps in its own namespace.
    assert set(refused) == {"seccompagent-notify-dangerous.yaml", "pranitat-spo-demo-seccompprofile.yaml"}
    assert "SCMP_ACT_NOTIFY" in refused["seccompagent-notify-dangerous.yaml"][0]
    assert "runc-v1.0.0" in refused["pranitat-spo-demo-seccompprofile.yaml"][0]
