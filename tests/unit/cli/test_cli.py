from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path

import pytest
import yaml

from secprofiles.cli import main as cli
from tests.conftest import REPO, SEEDS


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_library_lints_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "lint", str(REPO / "profiles"))
    assert (code, out) == (0, "")
    assert "0 finding(s)" in err


BAD = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: secprofiles.io/v1alpha1
kind: SeccompProfile
metadata:
  name: bad
spec:
  defaultAction: SCMP_ACT_ALLOW
  syscalls:
  - names: [chmod, chmodat]
    action: SCMP_ACT_ERRNO
---
apiVersion: secprofiles.io/v1alpha1
kind: SeccompProfile
metadata:
  name: bad
spec:
  defaultAction: SCMP_ACT_ALLOW
---
apiVersion: secprofiles.io/v1alpha1
kind: Widget
metadata: {name: w}
"""


def test_lint_reports_file_line_kind_name_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bad.yaml", BAD)
    code, out, _ = run(capsys, "lint", str(tmp_path))
    lines = out.splitlines()
    assert code == 1
    assert f"{path}:12: SeccompProfile/bad: spec.syscalls[0].names[1]: unknown syscall 'chmodat'" in lines[0]
    assert any(f"{path}:15: SeccompProfile/bad: metadata.name: duplicate" in line for line in lines)
    assert any("Widget/w: kind: unknown kind" in line for line in lines)
    code, out, _ = run(capsys, "lint", "--output", "json", str(path))
    report = json.loads(out)
    assert code == 1 and report["skipped"] == 1
    assert {f["field"] for f in report["findings"]} == {"spec.syscalls[0].names[1]", "metadata.name", "kind"}


def test_lint_base_reference_across_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "a.yaml", "apiVersion: secprofiles.io/v1alpha1\nkind: SeccompProfile\nmetadata: {name: a}\n"
                              "spec: {defaultAction: SCMP_ACT_ERRNO, baseProfileName: b}\n")
    assert run(capsys, "lint", str(tmp_path))[0] == 1
    write(tmp_path, "b.yaml", "apiVersion: secprofiles.io/v1alpha1\nkind: SeccompProfile\nmetadata: {name: b}\n"
                              "spec: {defaultAction: SCMP_ACT_ALLOW}\n")
    assert run(capsys, "lint", str(tmp_path))[0] == 0


@pytest.mark.parametrize(("text", "words"), [
    ("a: [1, 2\n", "YAML syntax error"),
    ("- just\n- a list\n", "not a mapping"),
    ("foo: bar\n", "no apiVersion/kind"),
])
def test_lint_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: str) -> None:
    write(tmp_path, "x.yaml", text)
    code, out, _ = run(capsys, "lint", str(tmp_path / "x.yaml"))
    assert code == 1 and words in out and "Traceback" not in out


def test_lint_unreadable_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A Unix socket exists and is no directory, but open() fails with ENXIO even for root (CI runs as root,
    # where a chmod 0 file would be read).
    monkeypatch.chdir(tmp_path)  # bind a relative name: AF_UNIX paths are limited to 107 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("x.yaml")
    path = tmp_path / "x.yaml"
    code, out, err = run(capsys, "lint", str(path))
    assert code == 1  # a finding (exit 1) naming the file, not a usage error (2) or an exception
    assert out == f"{path}: cannot read file: {os.strerror(errno.ENXIO)}\n"
    assert "1 finding(s)" in err


def test_lint_undecodable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.yaml").write_bytes(b"\xff\xfe\x00bad")
    code, out, _ = run(capsys, "lint", str(tmp_path / "x.yaml"))
    assert code == 1 and "cannot read file" in out


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "lint", str(tmp_path / "missing"))[0] == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["frobnicate"])
    assert exit_.value.code == 2


def test_render_prints_the_exact_file_and_hash(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "render", str(REPO / "profiles/seccomp/prevent-chmod-legacy.yaml"))
    assert code == 0
    assert json.loads(out) == {"defaultAction": "SCMP_ACT_ALLOW",
                               "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}
    assert "sha256:" in err and "secprofiles/default/prevent-chmod-legacy.json" in err


def test_render_refuses_invalid_profiles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "x.yaml", BAD.split("---")[1])
    code, out, err = run(capsys, "render", str(path))
    assert code == 1 and out == "" and "unknown syscall 'chmodat'" in err


def test_render_output_dir_writes_node_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = (REPO / "profiles/seccomp/prevent-chmod.yaml").read_text() + "---\n" + \
        (REPO / "profiles/apparmor/k8s-apparmor-example-deny-write.yaml").read_text()
    path = write(tmp_path, "both.yaml", both)
    assert run(capsys, "render", str(path))[0] == 2
    code, out, _ = run(capsys, "render", str(path), "--namespace", "team-a", "--output-dir", str(tmp_path / "out"))
    assert code == 0
    assert (tmp_path / "out/secprofiles/team-a/prevent-chmod.json").is_file()
    assert (tmp_path / "out/apparmor/k8s-apparmor-example-deny-write").is_file()


@pytest.mark.parametrize("seed", ["prevent-chmod.legacy.json", "prevent-chmod.json"])
def test_import_seccomp_both_source_forms(seed: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "import", str(SEEDS / seed), "--name", "prevent-chmod", "--namespace", "apps")
    obj = yaml.safe_load(out)
    assert code == 0
    assert obj["metadata"] == {"name": "prevent-chmod", "namespace": "apps"}
    names = sorted(n for rule in obj["spec"]["syscalls"] for n in rule["names"])
    assert names == ["chmod", "fchmodat"]
    assert "dropped names that are not a syscall" in err and "chmodat" in err


def test_import_docker_style_profile_resolves_arch_and_caps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
                    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "basics", "args": []},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
            {"name": "personality", "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        ]}
    path = write(tmp_path, "docker.json", json.dumps(source))
    code, out, _ = run(capsys, "import", str(path), "--arch", "amd64", "--capabilities", "CAP_CHOWN,SYS_PTRACE")
    spec = yaml.safe_load(out)["spec"]
    assert code == 0
    assert spec["architectures"] == ["SCMP_ARCH_X32", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64"]
    names = {n for rule in spec["syscalls"] for n in rule["names"]}
    assert names == {"read", "write", "arch_prctl", "ptrace", "personality"}
    assert "comment" not in out
    code, out, _ = run(capsys, "import", str(path), "--arch", "arm64", "--capabilities", "")
    spec = yaml.safe_load(out)["spec"]
    assert spec["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert {n for rule in spec["syscalls"] for n in rule["names"]} == {"read", "write", "mount", "personality"}


def test_import_apparmor_renames_and_drops_attachment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "usr.bin.demo", "#include <tunables/global>\n\n"
                                           "/usr/bin/demo flags=(complain,attach_disconnected) {\n"
                                           "  #include <abstractions/base>\n  /etc/** r,\n}\n")
    code, out, err = run(capsys, "import", str(path), "--name", "demo")
    obj = yaml.safe_load(out)
    assert code == 0, err
    assert obj["kind"] == "AppArmorProfile" and obj["metadata"]["name"] == "demo"
    assert obj["spec"]["mode"] == "complain"
    assert "profile demo flags=(attach_disconnected) {" in obj["spec"]["policy"]
    assert "/usr/bin/demo" not in obj["spec"]["policy"]
    assert "dropped the attachment" in err


def test_import_source_apparmor_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "import", str(SEEDS / "deny-write.profile"))
    assert code == 0
    assert yaml.safe_load(out)["metadata"]["name"] == "k8s-apparmor-example-deny-write"


@pytest.mark.parametrize(("content", "words"), [("{not json", "not valid JSON"), ('{"a": 1}', "no defaultAction"),
                                                 ("just text", "not recognised")])
def test_import_rejects_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            content: str, words: str) -> None:
    code, _, err = run(capsys, "import", str(write(tmp_path, "x", content)))
    assert code == 1 and words in err
