"""The control-plane build step: content-keyed cache, atomic builds, version stamping (fake ``go``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from devtools.build import BuildError, ensure_binary, kubernetes_version, source_key

GO_MOD = """module example.com/controlplane

go 1.24.0

require k8s.io/kubernetes v1.34.4
"""

# Records its arguments, then writes an executable to the -o path (or fails on demand).
FAKE_GO = """#!/bin/sh
echo "$@" >> "$FAKE_GO_LOG"
if [ -n "$FAKE_GO_FAIL" ]; then echo "compile error" >&2; exit 1; fi
out=""
prev=""
for a in "$@"; do
  if [ "$prev" = "-o" ]; then out="$a"; fi
  prev="$a"
done
echo "example.com/controlplane"
printf '#!/bin/sh\\necho built\\n' > "$out"
chmod +x "$out"
"""


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    (d / "go.mod").write_text(GO_MOD)
    (d / "go.sum").write_text("")
    (d / "main.go").write_text("package main\n\nfunc main() {}\n")
    return d


@pytest.fixture
def fake_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    go = bindir / "go"
    go.write_text(FAKE_GO)
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "go.log"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GO_LOG", str(log))
    monkeypatch.setenv("SECPROFILES_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SECPROFILES_CONTROLPLANE_BIN", raising=False)
    monkeypatch.delenv("FAKE_GO_FAIL", raising=False)
    return log


def test_key_follows_content(src: Path) -> None:
    key = source_key(src)
    assert key == source_key(src)
    (src / "README.md").write_text("docs do not matter")
    assert source_key(src) == key
    (src / "main.go").write_text("package main\n\nfunc main() { println() }\n")
    assert source_key(src) != key


def test_kubernetes_version_comes_from_go_mod(src: Path) -> None:
    assert kubernetes_version(src) == "v1.34.4"


def test_repo_go_mod_pins_kubernetes_1_34() -> None:
    assert kubernetes_version().startswith("v1.34.")


def test_build_once_then_cached(src: Path, fake_go: Path, tmp_path: Path) -> None:
    path = ensure_binary(src)
    assert path == tmp_path / "cache" / "controlplane" / source_key(src) / "controlplane"
    assert os.access(path, os.X_OK)
    calls = fake_go.read_text().splitlines()
    assert len(calls) == 1
    assert "-trimpath" in calls[0]
    assert "-X k8s.io/component-base/version.gitVersion=v1.34.4" in calls[0]
    assert "-X k8s.io/component-base/version.gitMinor=34" in calls[0]
    assert ensure_binary(src) == path
    assert len(fake_go.read_text().splitlines()) == 1  # no second build
    # no temporary build directories left behind
    assert sorted(p.name for p in path.parent.parent.iterdir() if p.is_dir()) == [source_key(src)]


def test_failed_build_leaves_nothing_cached(
    src: Path, fake_go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_GO_FAIL", "1")
    with pytest.raises(BuildError, match="compile error"):
        ensure_binary(src)
    cache = tmp_path / "cache" / "controlplane"
    assert not (cache / source_key(src)).exists()
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_prebuilt_binary_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "controlplane"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("SECPROFILES_CONTROLPLANE_BIN", str(exe))
    assert ensure_binary() == exe
    exe.chmod(0o644)
    with pytest.raises(BuildError):
        ensure_binary()


def test_missing_go_is_a_clear_error(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECPROFILES_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SECPROFILES_CONTROLPLANE_BIN", raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BuildError, match="Go toolchain"):
        ensure_binary(src)
