"""The multi-call Kubernetes binary of ``devtools/kubernetes`` (etcd, kube-apiserver, kube-controller-manager, …),
built with Go into a cache outside the work tree, keyed by a sha256 of the Go module's content.

A second call with the same content only hashes a few files and stats the cached binary. Builds go to a temporary
file renamed into place on success, under a file lock, so concurrent callers never build twice or see half a file.

Environment: ``SECPROFILES_CACHE`` (default ``~/.cache/secprofiles``; binaries in
``$SECPROFILES_CACHE/controlplane/<key>/controlplane``), ``SECPROFILES_CONTROLPLANE_BIN`` (use this binary, build
nothing), ``SECPROFILES_CONTROLPLANE_SRC`` (the Go module to build; default ``devtools/kubernetes``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Final


class BuildError(RuntimeError):
    """``go build`` of the binary failed, or its sources are missing."""


#: Bump when the way the binary is built changes (part of the cache key, with the build flags).
_BUILD_RECIPE: Final = "controlplane-build-v1"
#: -buildvcs=false: the binary must not depend on (or fail over) the work tree's git state.
_BUILD_FLAGS: Final = ("-trimpath", "-buildvcs=false")
_PROGRESS_INTERVAL: Final = 15.0


def _log(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


def default_source_dir() -> Path:
    """The Go module that builds the control-plane binary."""
    env = os.environ.get("SECPROFILES_CONTROLPLANE_SRC")
    return Path(env) if env else Path(__file__).resolve().parent / "kubernetes"


def cache_root() -> Path:
    """The cache directory for built binaries (``$SECPROFILES_CACHE`` or ``~/.cache/secprofiles``)."""
    env = os.environ.get("SECPROFILES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "secprofiles"


def _source_files(src: Path) -> list[Path]:
    files = [p for p in (src / "go.mod", src / "go.sum") if p.is_file()]
    files += sorted(p for p in src.rglob("*.go") if p.is_file())
    return files


def source_key(src: Path | None = None) -> str:
    """A sha256 over the Go module's content (go.mod, go.sum, ``*.go``) and the build recipe."""
    src = src or default_source_dir()
    h = hashlib.sha256()
    h.update(_BUILD_RECIPE.encode())
    h.update(" ".join(_BUILD_FLAGS).encode())
    for path in _source_files(src):
        rel = path.relative_to(src).as_posix().encode()
        data = path.read_bytes()
        h.update(b"\0%d:%s\0%d:" % (len(rel), rel, len(data)))
        h.update(data)
    return h.hexdigest()


def kubernetes_version(src: Path | None = None) -> str:
    """The ``k8s.io/kubernetes`` version required by the module's go.mod (e.g. ``v1.34.4``)."""
    src = src or default_source_dir()
    text = (src / "go.mod").read_text()
    m = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\d+\.\d+\.\d+\S*)", text, re.MULTILINE)
    if not m:
        raise BuildError(f"{src / 'go.mod'} does not require k8s.io/kubernetes")
    return m.group(1)


def binary_cache_path(src: Path | None = None) -> Path:
    """Where the binary for the current content of ``src`` is (or will be) cached."""
    return cache_root() / "controlplane" / source_key(src) / "controlplane"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _ldflags(version: str) -> str:
    m = re.match(r"v(\d+)\.(\d+)", version)
    if not m:
        raise BuildError(f"cannot parse Kubernetes version {version!r}")
    pkg = "k8s.io/component-base/version"
    return " ".join(
        [
            "-s",
            "-w",
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={m.group(1)}",
            f"-X {pkg}.gitMinor={m.group(2)}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    )


def _pump(stream: IO[str], sink: queue.Queue[str | None]) -> None:
    for line in stream:
        sink.put(line.rstrip("\n"))
    sink.put(None)


def _run_go_build(src: Path, out: Path, version: str) -> None:
    go = shutil.which("go")
    if go is None:
        raise BuildError("the Go toolchain ('go') is not on PATH; it is needed to build devtools/kubernetes")
    cmd = [go, "build", *_BUILD_FLAGS, "-p", str(min(os.cpu_count() or 2, 4)), "-v"]
    cmd += ["-ldflags", _ldflags(version), "-o", str(out), "."]
    _log(f"building control plane {version} in {src} (first build takes several minutes)")
    _log("$ " + shlex.join(cmd))
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=src, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    tail: deque[str] = deque(maxlen=60)
    count = downloads = 0
    last_report = start
    try:
        while True:
            try:
                line = lines.get(timeout=_PROGRESS_INTERVAL)
            except queue.Empty:
                line = ""
            if line is None:
                break
            now = time.monotonic()
            if line:
                tail.append(line)
                if line.startswith("go: downloading "):
                    downloads += 1
                elif not line.startswith(("go: ", "#")) and " " not in line:
                    count += 1  # `go build -v` names each package it compiles
                else:
                    _log(f"go build: {line}")
            if now - last_report >= _PROGRESS_INTERVAL:
                what = f", last: {tail[-1]}" if tail else ""
                fetched = f"{downloads} modules downloaded, " if downloads else ""
                _log(f"build: {fetched}{count} packages compiled, {now - start:.0f}s elapsed{what}")
                last_report = now
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    elapsed = time.monotonic() - start
    if rc != 0:
        raise BuildError(f"go build failed (exit {rc}) after {elapsed:.0f}s:\n" + "\n".join(tail))
    _log(f"build finished: {downloads} modules downloaded, {count} packages compiled in {elapsed:.0f}s")


def ensure_binary(src: Path | None = None, *, force: bool = False) -> Path:
    """Return the path of the control-plane binary for ``src``, building it if needed.

    ``$SECPROFILES_CONTROLPLANE_BIN`` short-circuits everything.  Otherwise the
    binary is cached under :func:`cache_root` keyed by :func:`source_key`; the
    build goes to a temporary file that is renamed into place only on success,
    and a file lock keeps concurrent callers from building twice.
    """
    env = os.environ.get("SECPROFILES_CONTROLPLANE_BIN")
    if env and not force:
        path = Path(env)
        if not _is_executable(path):
            raise BuildError(f"SECPROFILES_CONTROLPLANE_BIN={env} is not an executable file")
        return path
    src = (src or default_source_dir()).resolve()
    if not (src / "go.mod").is_file():
        raise BuildError(f"no Go module at {src}")
    final = binary_cache_path(src)
    if _is_executable(final) and not force:
        return final
    final.parent.parent.mkdir(parents=True, exist_ok=True)
    lock_path = final.parent.parent / f"{final.parent.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_executable(final) and not force:
            return final  # built by a concurrent caller while we waited
        tmpdir = Path(tempfile.mkdtemp(prefix=f".build-{final.parent.name[:12]}-", dir=final.parent.parent))
        try:
            tmp = tmpdir / "controlplane"
            _run_go_build(src, tmp, kubernetes_version(src))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    return final
