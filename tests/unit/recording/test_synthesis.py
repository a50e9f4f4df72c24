"""Recorded names -> SeccompProfile objects that lint and render clean; the measured runtime list."""

from __future__ import annotations

import re
from pathlib import Path

import pyseccomp
import pytest
import yaml

from secprofiles.cli import main as cli
from secprofiles.recording.runtime_syscalls import known_runtimes, runtime_inits, runtime_syscalls
from secprofiles.recording.synthesis import RUNTIME_ANNOTATION, SynthesisError, logging_profile, synthesize

ARCHES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def test_profile_shape_and_determinism() -> None:
    one = synthesize("web", ["write", "read", "read", "socketcall"], ARCHES, namespace="apps",
                     runtime=("runc-1.1", ["execve", "read", "capset"]))
    two = synthesize("web", ["socketcall", "read", "write"], reversed(ARCHES), namespace="apps",
                     runtime=("runc-1.1", ["capset", "execve"]))
    assert yaml.safe_dump(one, sort_keys=False) == yaml.safe_dump(two, sort_keys=False)
    assert one == {
        "apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
        "metadata": {"name": "web", "namespace": "apps", "annotations": {RUNTIME_ANNOTATION: "runc-1.1"}},
        "spec": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": sorted(ARCHES), "syscalls": [
            {"names": ["read", "socketcall", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["capset", "execve"], "action": "SCMP_ACT_ALLOW"}]}}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"recorded": []}, "spec.syscalls"),
    ({"default_action": "SCMP_ACT_ALLOW"}, "spec.defaultAction"),
    ({"default_action": "SCMP_ACT_KILL_PROCESS", "errno_ret": 1}, "spec.defaultErrnoRet"),
    ({"errno_ret": 5000}, "spec.defaultErrnoRet"),
    ({"architectures": []}, "spec.architectures"),
])
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"recorded": ["read"], "architectures": ARCHES, **kwargs}
    with pytest.raises(SynthesisError) as error:
        synthesize("p", **arguments)  # type: ignore[arg-type]
    assert error.value.field == field


@pytest.mark.parametrize("default_action", ["SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS"])
def test_synthesized_profiles_lint_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         default_action: str) -> None:
    profile = synthesize("recorded", ["read", "write", "exit_group", "socketcall"], ARCHES, namespace="default",
                         default_action=default_action, runtime=("runc-1.1", runtime_syscalls("runc-1.1")),
                         annotations={"secprofiles.io/recorded-by": "secprofiles record"})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    assert cli.main(["lint", str(path)]) == 0, capsys.readouterr()
    assert cli.main(["render", str(path)]) == 0


def test_the_measured_runtime_list_is_known_to_libseccomp_and_labelled() -> None:
    assert "runc-1.1" in known_runtimes()
    names = runtime_syscalls("runc-1.1")
    assert {"execve", "close"} <= set(names) and names == sorted(set(names))
    assert all(pyseccomp.resolve_syscall(pyseccomp.Arch.X86_64, name) >= 0 for name in names)
    with pytest.raises(ValueError, match=re.escape("runc-1.1")):
        runtime_syscalls("crun-9")
    assert runtime_inits() == {"runc:[2:INIT]": "runc-1.1"}


def test_the_logging_profile_logs_every_syscall_on_every_architecture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = logging_profile("web.log", "apps", reversed(ARCHES), annotations={"secprofiles.io/recording": "web"})
    assert profile["spec"] == {"defaultAction": "SCMP_ACT_LOG", "architectures": sorted(ARCHES)}
    assert profile["metadata"] == {"name": "web.log", "namespace": "apps",
                                   "annotations": {"secprofiles.io/recording": "web"}}
    path = tmp_path / "log.yaml"
    path.write_text(yaml.safe_dump(profile))
    assert cli.main(["lint", str(path)]) == 0, capsys.readouterr()
