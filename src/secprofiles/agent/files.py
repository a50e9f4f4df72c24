"""The agent's seccomp files: path safety, atomic writes, and cleanup of what it owns.

Everything happens under ``<host root><kubelet root>/seccomp/secprofiles/`` through directory file
descriptors opened with ``O_NOFOLLOW``: a symlink planted anywhere in that subtree is never followed,
so no write, rename or unlink can land outside it. Writes go to a ``.tmp-`` file in the final
directory, are fsynced, renamed over the final name and the directory is fsynced: a crash at any
moment leaves either the old file or the new one at the final path, plus at worst a temp file that
the next start removes. Synchronous on purpose: callers run these in a worker thread
(``asyncio.to_thread``) because fsync can block for milliseconds.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from secprofiles.model.keys import NODE_SUBDIR
from secprofiles.model.schema import is_dns1123_label, is_dns1123_subdomain

TMP_PREFIX = ".tmp-"
SUFFIX = ".json"
FILE_MODE = 0o644
DIR_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Key = tuple[str, str]  # (namespace, name)


class UnsafePathError(ValueError):
    """A namespace/name that is not DNS-1123, or a path that would leave the agent's subtree."""


def check_key(namespace: str, name: str) -> None:
    """Refuse anything but a DNS-1123 namespace and name (no ``/``, no ``..``, no NUL): raises UnsafePathError."""
    if not is_dns1123_label(namespace):
        raise UnsafePathError(f"namespace {namespace!r} is not a DNS-1123 label")
    # The file name adds ".json"; keep it within NAME_MAX (255).
    if not is_dns1123_subdomain(name) or len(name) + len(SUFFIX) + len(TMP_PREFIX) + 17 > 255:
        raise UnsafePathError(f"name {name!r} is not a DNS-1123 subdomain usable as a file name")


class SeccompTree:
    """``<host root><kubelet root>/seccomp/secprofiles``: the only place the agent writes seccomp files."""

    def __init__(self, host_root: Path, kubelet_root: str) -> None:
        # The host root and kubelet root are trusted configuration (they may be symlinks on real hosts,
        # e.g. /var/lib/kubelet on another disk): resolve them once. Below ``seccomp`` nothing is followed.
        self.seccomp_dir = Path(os.path.realpath(host_root / kubelet_root.lstrip("/") / "seccomp"))
        self.root = self.seccomp_dir / NODE_SUBDIR

    def final_path(self, namespace: str, name: str) -> Path:
        """The absolute path of a profile's file, checked to lie inside the subtree."""
        check_key(namespace, name)
        path = self.root / namespace / f"{name}{SUFFIX}"
        # Belt and braces: the names above cannot escape, but a future change to them must not either.
        if os.path.commonpath([os.path.normpath(path), self.root]) != str(self.root) or path.parent.parent != self.root:
            raise UnsafePathError(f"{path} is outside {self.root}")
        return path

    @contextmanager
    def _root_fd(self) -> Iterator[int]:
        fd = open_dir(self.root)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _namespace_fd(self, namespace: str, create: bool) -> Iterator[int | None]:
        with self._root_fd() as root:
            if create:
                _mkdir_at(root, namespace)
            try:
                fd = _open_dir_at(root, namespace)
            except FileNotFoundError:
                yield None
                return
            try:
                yield fd
            finally:
                os.close(fd)

    def write(self, namespace: str, name: str, content: bytes) -> Path:
        """Atomically replace the profile's file with ``content`` (mode 0644); returns the final path."""
        final = self.final_path(namespace, name)
        with self._namespace_fd(namespace, create=True) as dir_fd:
            assert dir_fd is not None
            write_at(dir_fd, final.name, content)
        return final

    def read(self, namespace: str, name: str) -> bytes | None:
        """The current bytes of a profile's file, or None if there is no regular file there."""
        self.final_path(namespace, name)
        with self._namespace_fd(namespace, create=False) as dir_fd:
            return None if dir_fd is None else read_at(dir_fd, f"{name}{SUFFIX}")

    def remove(self, namespace: str, name: str) -> bool:
        """Delete a profile's file (and its namespace directory once empty); False if it was not there."""
        self.final_path(namespace, name)
        with self._namespace_fd(namespace, create=False) as dir_fd:
            if dir_fd is None:
                return False
            try:
                os.unlink(f"{name}{SUFFIX}", dir_fd=dir_fd)
            except FileNotFoundError:
                return False
            os.fsync(dir_fd)
        self._remove_dir_if_empty(namespace)
        return True

    def _remove_dir_if_empty(self, namespace: str) -> None:
        with self._root_fd() as root:
            try:
                os.rmdir(namespace, dir_fd=root)
            except OSError:
                return  # not empty (ENOTEMPTY) or already gone: both fine

    def existing(self) -> dict[Key, bytes]:
        """Every ``<namespace>/<name>.json`` regular file in the subtree with its bytes (symlinks ignored)."""
        found: dict[Key, bytes] = {}
        with self._root_fd() as root:
            for namespace, ns_fd in _subdirs(root):
                try:
                    for entry in os.scandir(ns_fd):
                        name = entry.name.removesuffix(SUFFIX)
                        if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False) \
                                and is_dns1123_subdomain(name):
                            content = read_at(ns_fd, entry.name)
                            if content is not None:
                                found[(namespace, name)] = content
                finally:
                    os.close(ns_fd)
        return found

    def cleanup(self, keep: set[Key]) -> list[str]:
        """Remove every entry of the subtree that is not a kept profile file: stale profiles, ``.tmp-`` files
        left by a crash, symlinks, anything else. Directories below namespace level are left alone (the agent
        never makes them). Returns the removed paths, relative to the subtree."""
        removed: list[str] = []
        with self._root_fd() as root:
            for entry in os.scandir(root):
                if entry.is_dir(follow_symlinks=False):
                    continue
                os.unlink(entry.name, dir_fd=root)  # a stray file or symlink: unlink never follows
                removed.append(entry.name)
            for namespace, ns_fd in _subdirs(root):
                try:
                    for entry in os.scandir(ns_fd):
                        if entry.is_dir(follow_symlinks=False):
                            continue
                        name = entry.name.removesuffix(SUFFIX)
                        wanted = entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False) \
                            and (namespace, name) in keep
                        if not wanted:
                            os.unlink(entry.name, dir_fd=ns_fd)
                            removed.append(f"{namespace}/{entry.name}")
                    if removed:
                        os.fsync(ns_fd)
                finally:
                    os.close(ns_fd)
                self._remove_dir_if_empty(namespace)
        return sorted(removed)


def write_at(dir_fd: int, file_name: str, content: bytes) -> None:
    """Atomically replace ``file_name`` in the directory ``dir_fd``: temp file, fsync, rename, fsync directory."""
    temp = f"{TMP_PREFIX}{file_name}.{secrets.token_hex(8)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it; the runtime only needs read
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        # rename() replaces a symlink at the final name instead of following it.
        os.rename(temp, file_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, temp)
        raise
    os.fsync(dir_fd)


def open_dir(path: Path) -> int:
    """Open (creating it if needed) a directory the agent owns. A symlink or file planted in its place is
    removed, never followed (unlink does not follow), and a real directory made instead."""
    os.makedirs(path.parent, mode=DIR_MODE, exist_ok=True)
    parent = os.open(path.parent, _DIR_FLAGS)
    try:
        _mkdir_at(parent, path.name)
        try:
            return _open_dir_at(parent, path.name)
        except UnsafePathError:
            os.unlink(path.name, dir_fd=parent)
            _mkdir_at(parent, path.name)
            return _open_dir_at(parent, path.name)
    finally:
        os.close(parent)


def read_at(dir_fd: int, file_name: str) -> bytes | None:
    """A regular file's bytes, or None if it is missing or not a regular file (a symlink is not followed)."""
    try:
        fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return handle.read()


def _subdirs(root_fd: int) -> list[tuple[str, int]]:
    """The real (non-symlink) subdirectories of ``root_fd``, each opened without following symlinks."""
    opened: list[tuple[str, int]] = []
    for entry in os.scandir(root_fd):
        if entry.is_dir(follow_symlinks=False):
            try:
                opened.append((entry.name, _open_dir_at(root_fd, entry.name)))
            except (OSError, UnsafePathError):
                continue  # swapped for a symlink or removed since the scan: not ours to follow
    return opened


def _mkdir_at(dir_fd: int, name: str) -> None:
    with suppress(FileExistsError):
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)


def _open_dir_at(dir_fd: int, name: str) -> int:
    """Open a subdirectory; a symlink in its place raises UnsafePathError instead of being followed."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as error:  # ELOOP or ENOTDIR: a symlink or a file where a directory belongs
        raise UnsafePathError(f"{name!r} in the seccomp subtree is not a real directory ({error.strerror}); "
                              "refusing to follow it") from error


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
