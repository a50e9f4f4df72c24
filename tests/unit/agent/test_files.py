"""The agent's file handling: atomic writes, path safety, cleanup of its own subtree only."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from secprofiles.agent import files
from secprofiles.agent.files import SeccompTree, UnsafePathError


@pytest.fixture
def tree(tmp_path: Path) -> SeccompTree:
    return SeccompTree(tmp_path / "host", "/var/lib/kubelet")


def test_write_lands_at_the_kubelet_path_with_mode_0644(tree: SeccompTree, tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        path = tree.write("apps", "prevent-chmod", b'{"defaultAction": "SCMP_ACT_ALLOW"}\n')
    finally:
        os.umask(old_umask)
    expected = tmp_path / "host/var/lib/kubelet/seccomp/secprofiles/apps/prevent-chmod.json"
    assert path == expected
    assert expected.read_bytes() == b'{"defaultAction": "SCMP_ACT_ALLOW"}\n'
    assert expected.stat().st_mode & 0o777 == 0o644
    assert os.listdir(expected.parent) == ["prevent-chmod.json"]  # no temp file left behind


def test_a_reader_never_sees_a_partial_file(tree: SeccompTree) -> None:
    big = [json.dumps({"n": i, "pad": "x" * 200_000}).encode() for i in range(2)]
    tree.write("apps", "p", big[0])
    final = tree.final_path("apps", "p")
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(json.loads(final.read_bytes())["n"])  # raises on a partial file

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(200):
            tree.write("apps", "p", big[i % 2])
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= {0, 1}


def test_a_crash_between_write_and_rename_leaves_only_a_temp_file_that_the_next_start_removes(
        tree: SeccompTree, monkeypatch: pytest.MonkeyPatch) -> None:
    tree.write("apps", "p", b"old\n")

    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("simulated crash between write and rename")

    # A real crash does not run the cleanup in write(); emulate it by making the cleanup a no-op too.
    monkeypatch.setattr(os, "rename", crash)
    monkeypatch.setattr(files, "_unlink_quietly", lambda *a: None)
    with pytest.raises(SystemExit):
        tree.write("apps", "p", b"new\n")
    monkeypatch.undo()
    directory = tree.final_path("apps", "p").parent
    temps = [name for name in os.listdir(directory) if name.startswith(files.TMP_PREFIX)]
    assert len(temps) == 1 and (directory / temps[0]).read_bytes() == b"new\n"
    assert tree.final_path("apps", "p").read_bytes() == b"old\n"  # the final path still has the whole old file

    removed = tree.cleanup({("apps", "p")})
    assert removed == [f"apps/{temps[0]}"]
    assert sorted(os.listdir(directory)) == ["p.json"]


def test_a_failed_write_removes_its_temp_file(tree: SeccompTree, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        tree.write("apps", "p", b"x")
    monkeypatch.undo()
    assert os.listdir(tree.root / "apps") == []


@pytest.mark.parametrize(("namespace", "name"), [
    ("..", "p"),
    ("apps", ".."),
    ("apps", "../../../../etc/passwd"),
    ("apps/../..", "p"),
    ("/etc", "p"),
    ("apps", "/etc/shadow"),
    ("apps", "a/b"),
    ("Apps", "p"),
    ("apps", "p\x00"),
    ("", "p"),
    ("apps", ""),
    ("a" * 64, "p"),
    ("apps", "-leading-dash"),
])
def test_path_escape_attempts_are_refused(tree: SeccompTree, namespace: str, name: str, tmp_path: Path) -> None:
    for operation in (tree.final_path, tree.read, tree.remove):
        with pytest.raises(UnsafePathError):
            operation(namespace, name)
    with pytest.raises(UnsafePathError):
        tree.write(namespace, name, b"x")
    outside = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert outside == []


def test_a_symlinked_namespace_directory_is_never_followed(tree: SeccompTree, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "p.json").write_text("precious")
    tree.root.mkdir(parents=True)
    (tree.root / "apps").symlink_to(victim)

    with pytest.raises(UnsafePathError, match="not a real directory"):
        tree.write("apps", "p", b"evil")
    with pytest.raises(UnsafePathError):
        tree.read("apps", "p")
    with pytest.raises(UnsafePathError):
        tree.remove("apps", "p")
    assert (victim / "p.json").read_text() == "precious"

    # The start-up cleanup removes the planted link itself, never what it points to.
    assert tree.cleanup(set()) == ["apps"]
    assert not (tree.root / "apps").exists() and (victim / "p.json").read_text() == "precious"


def test_a_symlink_at_a_final_path_is_replaced_not_followed(tree: SeccompTree, tmp_path: Path) -> None:
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (tree.root / "apps").mkdir(parents=True)
    (tree.root / "apps" / "p.json").symlink_to(victim)
    assert tree.read("apps", "p") is None  # a symlink is not a profile file
    tree.write("apps", "p", b"profile\n")
    assert victim.read_text() == "precious"
    final = tree.final_path("apps", "p")
    assert not final.is_symlink() and final.read_bytes() == b"profile\n"


def test_a_symlinked_file_in_the_subtree_is_unlinked_by_cleanup_but_its_target_stays(
        tree: SeccompTree, tmp_path: Path) -> None:
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (tree.root / "apps").mkdir(parents=True)
    (tree.root / "apps" / "p.json").symlink_to(victim)
    assert tree.existing() == {}
    assert tree.cleanup({("apps", "p")}) == ["apps/p.json"]  # a kept key, but a symlink is never a kept file
    assert victim.read_text() == "precious"


def test_cleanup_removes_only_stale_entries_inside_the_subtree(tree: SeccompTree, tmp_path: Path) -> None:
    tree.write("apps", "keep", b"1")
    tree.write("apps", "stale", b"2")
    tree.write("gone", "stale", b"3")
    (tree.root / "stray-file").write_text("x")
    (tree.root / "apps" / f"{files.TMP_PREFIX}keep.json.0123").write_text("partial")
    (tree.root / "apps" / "nested").mkdir()  # the agent never makes these: left alone
    sibling = tree.seccomp_dir / "someone-elses.json"  # <kubelet root>/seccomp but outside secprofiles/
    sibling.write_text("theirs")
    outside = tmp_path / "host" / "etc" / "important"
    outside.parent.mkdir(parents=True)
    outside.write_text("theirs")

    removed = tree.cleanup({("apps", "keep")})

    assert removed == sorted([f"apps/{files.TMP_PREFIX}keep.json.0123", "apps/stale.json", "gone/stale.json",
                              "stray-file"])
    assert tree.existing() == {("apps", "keep"): b"1"}
    assert not (tree.root / "gone").exists()  # emptied namespace directories go
    assert (tree.root / "apps" / "nested").is_dir()
    assert sibling.read_text() == "theirs" and outside.read_text() == "theirs"


def test_remove_deletes_the_file_and_the_empty_namespace_directory(tree: SeccompTree) -> None:
    tree.write("apps", "a", b"1")
    tree.write("apps", "b", b"2")
    assert tree.remove("apps", "a") is True
    assert tree.remove("apps", "a") is False
    assert (tree.root / "apps").is_dir()
    assert tree.remove("apps", "b") is True
    assert not (tree.root / "apps").exists()
    assert tree.remove("nowhere", "x") is False


def test_a_symlinked_kubelet_root_is_trusted_configuration(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "kubelet"
    real.mkdir(parents=True)
    (tmp_path / "host" / "var" / "lib").mkdir(parents=True)
    (tmp_path / "host" / "var" / "lib" / "kubelet").symlink_to(real)
    tree = SeccompTree(tmp_path / "host", "/var/lib/kubelet")
    tree.write("apps", "p", b"x")
    assert (real / "seccomp" / "secprofiles" / "apps" / "p.json").read_bytes() == b"x"
