"""A real, local Kubernetes control plane for integration tests and development.

The control plane is one multi-call Go binary built from ``tools/controlplane``
(embedded etcd, ``kube-apiserver`` and ``kube-controller-manager`` of a pinned
Kubernetes release).  This module

* builds that binary into a cache outside the work tree, keyed by a sha256 of
  the Go module's content (:func:`ensure_binary`); a second call with the same
  content only hashes a few files and stats the cached binary;
* starts etcd, kube-apiserver and kube-controller-manager on free loopback
  ports with TLS, RBAC, service-account tokens and the default admission
  plugins (including the admission webhooks and ValidatingAdmissionPolicy),
  waits for ``/readyz`` and writes an admin kubeconfig (:class:`DevCluster`);
* stops exactly the processes it started.

Command line::

    python -m secprofiles.devcluster build            # build (or find) the binary, print its path
    python -m secprofiles.devcluster up --dir DIR     # start, print the kubeconfig path, run until Ctrl-C

Environment:

``SECPROFILES_CACHE``
    cache root (default ``~/.cache/secprofiles``); binaries live in
    ``$SECPROFILES_CACHE/controlplane/<key>/controlplane``.
``SECPROFILES_CONTROLPLANE_BIN``
    use this prebuilt binary instead of building one.
``SECPROFILES_CONTROLPLANE_SRC``
    the Go module to build (default ``<repo>/tools/controlplane``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secprofiles.pki import CertificateAuthority, key_pem

__all__ = [
    "CA_LIFETIME",
    "DEFAULT_CONTROLLERS",
    "SERVICE_ACCOUNT_ISSUER",
    "SERVICE_CLUSTER_IP_RANGE",
    "ApiError",
    "BuildError",
    "DevCluster",
    "DevClusterError",
    "binary_cache_path",
    "default_source_dir",
    "ensure_binary",
    "free_port",
    "free_ports",
    "kubernetes_version",
    "main",
    "source_key",
    "write_pair",
]

#: Service-account token issuer (and default API audience) of the dev cluster.
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc"
#: Cluster IP range given to the API server; configuration only, no traffic goes there.
SERVICE_CLUSTER_IP_RANGE: Final = "10.96.0.0/24"
#: Controllers run by kube-controller-manager.  The node lifecycle controller is
#: off so that simulated Node objects (which have no kubelet heart-beating) stay Ready.
DEFAULT_CONTROLLERS: Final = "*,-node-lifecycle-controller"

#: Bump when the way the binary is built changes (part of the cache key, with the build flags).
_BUILD_RECIPE: Final = "controlplane-build-v1"
#: -buildvcs=false: the binary must not depend on (or fail over) the work tree's git state.
_BUILD_FLAGS: Final = ("-trimpath", "-buildvcs=false")
_PROGRESS_INTERVAL: Final = 15.0
_LOG_TAIL_LINES: Final = 40


class DevClusterError(RuntimeError):
    """The control plane failed to build, start or answer."""


class BuildError(DevClusterError):
    """``go build`` of the control-plane binary failed."""


class ApiError(DevClusterError):
    """The API server answered a request with an unexpected HTTP status."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        """Record the failed request and the server's answer."""
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        super().__init__(f"{method} {path}: HTTP {status}: {body[:2000]}")

    def json(self) -> Any:
        """The answer's body decoded as JSON (usually a ``Status``), or ``None``."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


# --------------------------------------------------------------------------- build


def _log(msg: str) -> None:
    print(f"devcluster: {msg}", file=sys.stderr, flush=True)


def repo_root() -> Path:
    """The repository root (the directory holding ``operator/`` and ``tools/``)."""
    return Path(__file__).resolve().parents[2]


def default_source_dir() -> Path:
    """The Go module that builds the control-plane binary."""
    env = os.environ.get("SECPROFILES_CONTROLPLANE_SRC")
    return Path(env) if env else repo_root() / "tools" / "controlplane"


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
        raise BuildError("the Go toolchain ('go') is not on PATH; it is needed to build tools/controlplane")
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


# --------------------------------------------------------------------------- PKI


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


CA_LIFETIME = dt.timedelta(days=10)
CERT_LIFETIME = dt.timedelta(days=9)


def write_pair(ca: CertificateAuthority, directory: Path, stem: str, common_name: str,
               **kwargs: Any) -> tuple[Path, Path]:
    """Issue a certificate (see ``CertificateAuthority.issue``) and write ``stem.crt``/``stem.key``."""
    cert_pem, key = ca.issue(common_name, CERT_LIFETIME, **kwargs)
    return _write(directory / f"{stem}.crt", cert_pem), _write(directory / f"{stem}.key", key, 0o600)


# --------------------------------------------------------------------------- processes


def free_ports(n: int) -> list[int]:
    """Ask the kernel for ``n`` distinct free TCP ports on 127.0.0.1 (another process may take one before it is
    bound: callers that can retry do)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free TCP port on 127.0.0.1 (see ``free_ports``)."""
    return free_ports(1)[0]


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(data.splitlines()[-lines:])


def _vm_hwm_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, 0 if unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else 0


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Make the child get SIGTERM when the thread that started it dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str]
    peak_rss: int = 0

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class _Paths:
    run_dir: Path
    pki: Path = field(init=False)
    logs: Path = field(init=False)
    etcd_data: Path = field(init=False)

    def __post_init__(self) -> None:
        self.pki = self.run_dir / "pki"
        self.logs = self.run_dir / "logs"
        self.etcd_data = self.run_dir / "etcd"


class DevCluster:
    """A local etcd + kube-apiserver + kube-controller-manager on loopback ports.

    Use as a context manager (or call :meth:`start` / :meth:`stop`)::

        with DevCluster(tmp_path) as cluster:
            print(cluster.kubeconfig, cluster.server, cluster.version)

    After :meth:`start` the attributes ``kubeconfig``, ``server``, ``ca_file``,
    ``admin_cert``, ``admin_key``, ``version``, ``startup_seconds`` (until the API
    server is ready and the controller-manager healthy) and ``apiserver_ready_seconds`` are set;
    after :meth:`stop`, ``peak_rss_bytes`` (the sum of the processes' VmHWM)
    and ``peak_rss_by_process``.
    """

    def __init__(
        self,
        run_dir: Path | str | None = None,
        *,
        binary: Path | str | None = None,
        start_timeout: float = 180.0,
        stop_grace: float = 15.0,
        controllers: str = DEFAULT_CONTROLLERS,
        verbosity: int = 1,
        apiserver_args: Sequence[str] = (),
        controller_manager_args: Sequence[str] = (),
        wait_for_controller_manager: bool = True,
        die_with_parent: bool = True,
        quiet: bool = False,
    ) -> None:
        """Configure (but do not start) a dev cluster.

        ``run_dir`` holds certificates, etcd data, logs and the kubeconfig; a
        temporary directory is made (and removed again by :meth:`stop` unless
        the start failed) when it is ``None``.  ``binary`` defaults to
        :func:`ensure_binary`.  ``apiserver_args`` / ``controller_manager_args``
        are appended to (and so override) the generated flags.  With
        ``die_with_parent`` the children get SIGTERM if the thread that started
        them exits (so a crashed test run leaves no servers behind).
        """
        self._own_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="devcluster-"))
        self._binary = Path(binary) if binary is not None else None
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.controllers = controllers
        self.verbosity = verbosity
        self.apiserver_args = list(apiserver_args)
        self.controller_manager_args = list(controller_manager_args)
        self.wait_for_controller_manager = wait_for_controller_manager
        self.die_with_parent = die_with_parent
        self.quiet = quiet
        self._paths = _Paths(self.run_dir.resolve())
        self._procs: list[_Proc] = []
        self._ssl: ssl.SSLContext | None = None
        self._failed = False

        self.kubeconfig: Path = self.run_dir / "kubeconfig"
        self.server: str = ""
        self.ca_file: Path = self._paths.pki / "ca.crt"
        self.ca_key_file: Path = self._paths.pki / "ca.key"
        self.admin_cert: Path = self._paths.pki / "admin.crt"
        self.admin_key: Path = self._paths.pki / "admin.key"
        self.ca: CertificateAuthority | None = None
        self.version: str = ""
        self.etcd_url: str = ""
        self.apiserver_port: int = 0
        self.controller_manager_port: int = 0
        self.startup_seconds: float = 0.0
        self.apiserver_ready_seconds: float = 0.0
        self.peak_rss_bytes: int = 0
        self.peak_rss_by_process: dict[str, int] = {}

    # ---------------------------------------------------------------- public API

    @property
    def binary(self) -> Path:
        """The control-plane binary in use (built on first access if not given)."""
        if self._binary is None:
            self._binary = ensure_binary()
        return self._binary

    @property
    def running(self) -> bool:
        """Whether every started process is still alive."""
        return bool(self._procs) and all(p.alive() for p in self._procs)

    def log_file(self, name: str) -> Path:
        """The log of ``etcd``, ``kube-apiserver`` or ``kube-controller-manager``."""
        return self._paths.logs / f"{name}.log"

    def log_tail(self, name: str, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of a component's log."""
        return _tail(self.log_file(name), lines)

    def log_tails(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The tails of all component logs, for error reports."""
        parts = []
        for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if self.log_file(name).exists():
                parts.append(
                    f"----- {self.log_file(name)} (last {lines} lines) -----\n{self.log_tail(name, lines)}"
                )
        return "\n".join(parts)

    def start(self) -> DevCluster:
        """Start etcd, kube-apiserver and kube-controller-manager; return when ready.

        The free ports are picked just before the components bind them; if another
        process grabs one in between, the whole start is retried with new ports.
        """
        if self._procs:
            raise DevClusterError("dev cluster already started")
        binary = self.binary  # build outside the start-up clock
        t0 = time.monotonic()
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(binary, t0)
                break
            except DevClusterError as exc:
                self._failed = True
                self.stop()
                if attempt == attempts or "address already in use" not in str(exc):
                    raise
                _log(f"a port was taken by someone else ({exc.args[0].splitlines()[0]}); retrying")
                shutil.rmtree(self._paths.etcd_data, ignore_errors=True)
                self._failed = False
            except BaseException:
                self._failed = True
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - t0
        if not self.quiet:
            _log(
                f"control plane {self.version} ready at {self.server} in {self.startup_seconds:.1f}s "
                f"(apiserver /readyz after {self.apiserver_ready_seconds:.1f}s; kubeconfig {self.kubeconfig})"
            )
        return self

    def _start_once(self, binary: Path, t0: float) -> None:
        self._prepare_pki()
        etcd_client, etcd_peer, api_port, kcm_port = free_ports(4)
        self.etcd_url = f"http://127.0.0.1:{etcd_client}"
        self.apiserver_port = api_port
        self.controller_manager_port = kcm_port
        self.server = f"https://127.0.0.1:{api_port}"
        self._ssl = None
        deadline = time.monotonic() + self.start_timeout

        self._spawn("etcd", [str(binary), "etcd", *self._etcd_args(etcd_client, etcd_peer)])
        self._wait_until("etcd", deadline, self._etcd_healthy)

        self._spawn("kube-apiserver", [str(binary), "kube-apiserver", *self._apiserver_args()])
        self._wait_until("kube-apiserver", deadline, self._apiserver_ready)
        self.apiserver_ready_seconds = time.monotonic() - t0
        self._write_kubeconfigs()

        self._spawn("kube-controller-manager", [str(binary), "kube-controller-manager", *self._kcm_args()])
        if self.wait_for_controller_manager:
            self._wait_until("kube-controller-manager", deadline, self._kcm_healthy)
        self.version = str(self.get("/version")["gitVersion"])

    def stop(self) -> None:
        """Stop every process this object started (SIGTERM, then SIGKILL after ``stop_grace``)."""
        procs, self._procs = self._procs, []
        for p in procs:
            if p.alive():
                p.peak_rss = _vm_hwm_bytes(p.popen.pid)
        for p in reversed(procs):  # controller-manager, apiserver, etcd
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGTERM)
                try:
                    p.popen.wait(timeout=self.stop_grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        p.popen.kill()
                    p.popen.wait()
            else:
                p.popen.wait()
        if procs:
            self.peak_rss_by_process = {p.name: p.peak_rss for p in procs}
            self.peak_rss_bytes = sum(self.peak_rss_by_process.values())
            if not self.quiet:
                detail = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in self.peak_rss_by_process.items())
                _log(f"stopped; peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB ({detail})")
        if self._own_dir and not self._failed:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def kill_component(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one running component (``etcd``, ``kube-apiserver``, ``kube-controller-manager``) with ``sig``.

        The others keep running; :meth:`start_component` starts it again. For fault-injection tests.
        """
        proc = self._proc(name)
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(sig)
            try:
                proc.popen.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def start_component(self, name: str, timeout: float | None = None) -> float:
        """Start a component stopped by :meth:`kill_component` again, with the same arguments, ports and data
        directory; return once it is ready (and the API server with it), with the seconds that took."""
        proc = self._proc(name)
        if proc.alive():
            raise DevClusterError(f"{name} is still running")
        started = time.monotonic()
        deadline = started + (timeout or self.start_timeout)
        with proc.log.open("ab") as out:
            out.write(f"----- restarted by the test harness (exit status {proc.popen.returncode}) -----\n".encode())
        self._spawn(name, proc.argv)
        probes = {"etcd": self._etcd_healthy, "kube-apiserver": self._apiserver_ready,
                  "kube-controller-manager": self._kcm_healthy}
        self._wait_until(name, deadline, probes[name], watched=[name])
        if name == "etcd" and self._proc("kube-apiserver").alive():  # its /readyz includes etcd: wait for it
            self._wait_until("kube-apiserver", deadline, self._apiserver_ready, watched=["kube-apiserver"])
        ready = time.monotonic() - started
        # kube-controller-manager exits when it loses the API server at the wrong moment (a kubelet would
        # restart it): do the same, off the clock.
        manager = next((p for p in self._procs if p.name == "kube-controller-manager"), None)
        if name != "kube-controller-manager" and manager is not None and not manager.alive():
            self.start_component("kube-controller-manager", timeout)
        return ready

    def restart_apiserver(self, sig: int = signal.SIGTERM, down: float = 0.0) -> float:
        """Stop kube-apiserver with ``sig``, keep it down ``down`` seconds, start it again; seconds until ready."""
        self.kill_component("kube-apiserver", sig)
        time.sleep(down)
        return self.start_component("kube-apiserver")

    def restart_etcd(self, sig: int = signal.SIGTERM, down: float = 0.0) -> float:
        """Stop etcd with ``sig`` (same data directory kept), ``down`` seconds, start it again; seconds until the
        API server is ready again."""
        self.kill_component("etcd", sig)
        time.sleep(down)
        return self.start_component("etcd")

    def _proc(self, name: str) -> _Proc:
        for proc in self._procs:
            if proc.name == name:
                return proc
        raise DevClusterError(f"no component named {name!r} was started")

    def __enter__(self) -> DevCluster:
        """Start the cluster."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the cluster."""
        self.stop()

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        """Raise :class:`DevClusterError` (with the log tail) if a component (of ``names``, default all) has exited."""
        for p in self._procs:
            if names is not None and p.name not in names:
                continue
            rc = p.popen.poll()
            if rc is not None:
                raise DevClusterError(
                    f"{p.name} exited with status {rc}; last lines of {p.log}:\n{_tail(p.log)}"
                )

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting the cluster CA and presenting the admin certificate."""
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
            ctx.load_cert_chain(str(self.admin_cert), str(self.admin_key))
            self._ssl = ctx
        return self._ssl

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        token: str | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        """Send one request to the API server as admin (or with ``token``); return ``(status, body)``."""
        if not self.server:
            raise DevClusterError("dev cluster is not started")
        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if token is not None else self.ssl_context()
        conn = http.client.HTTPSConnection("127.0.0.1", self.apiserver_port, context=ctx, timeout=timeout)
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        ok: Sequence[int] = (200, 201, 202),
        token: str | None = None,
    ) -> Any:
        """Like :meth:`request` but JSON-decoded; raise :class:`ApiError` unless the status is in ``ok``."""
        status, raw = self.request(method, path, body, content_type=content_type, token=token)
        if status not in ok:
            raise ApiError(method, path, status, raw.decode(errors="replace"))
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        """``GET path`` as admin, decoded from JSON."""
        return self.api("GET", path)

    # ---------------------------------------------------------------- internals

    def _prepare_pki(self) -> None:
        pki = self._paths.pki
        pki.mkdir(parents=True, exist_ok=True)
        self._paths.logs.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority.create("secprofiles-devcluster-ca", CA_LIFETIME)
        self.ca = ca
        _write(self.ca_file, ca.cert_pem)
        _write(self.ca_key_file, key_pem(ca.key), 0o600)
        service_ip = str(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts()))
        write_pair(ca, pki, "apiserver", "kube-apiserver", server=True, hosts=[
            "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local", "127.0.0.1", service_ip])
        write_pair(ca, pki, "admin", "secprofiles-admin", organizations=["system:masters"], client=True)
        # Front proxy (request-header authentication) for the aggregation layer, as kubeadm sets it up;
        # without it every delegating component logs errors about a missing requestheader CA.
        front_proxy_ca = CertificateAuthority.create("secprofiles-devcluster-front-proxy-ca", CA_LIFETIME)
        _write(pki / "front-proxy-ca.crt", front_proxy_ca.cert_pem)
        write_pair(front_proxy_ca, pki, "front-proxy-client", "front-proxy-client", client=True)
        write_pair(ca, pki, "controller-manager", "system:kube-controller-manager", client=True)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write(pki / "sa.key", key_pem(sa_key), 0o600)
        _write(
            pki / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )

    def _etcd_args(self, client_port: int, peer_port: int) -> list[str]:
        return [
            "--name=devcluster",
            f"--data-dir={self._paths.etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # throw-away test data: speed over durability
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self._paths.pki
        return [
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={self.apiserver_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The 'kubernetes' Endpoints may not hold a loopback address; nothing needs them here.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={self.run_dir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            # Added to (not replacing) the default plugin set; nothing disables them.
            "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
            "ValidatingAdmissionPolicy",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--v={self.verbosity}",
            *self.apiserver_args,
        ]

    def _kcm_args(self) -> list[str]:
        pki = self._paths.pki
        kcfg = self.run_dir / "controller-manager.kubeconfig"
        return [
            f"--kubeconfig={kcfg}",
            f"--authentication-kubeconfig={kcfg}",
            f"--authorization-kubeconfig={kcfg}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            f"--cluster-signing-cert-file={self.ca_file}",
            f"--cluster-signing-key-file={self.ca_key_file}",
            "--use-service-account-credentials=true",
            f"--controllers={self.controllers}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.controller_manager_port}",
            f"--cert-dir={self.run_dir / 'controller-manager-certs'}",
            "--leader-elect=false",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--profiling=false",
            f"--v={self.verbosity}",
            *self.controller_manager_args,
        ]

    def _kubeconfig_doc(self, user: str, credentials: Mapping[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "devcluster",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file.resolve())},
                }
            ],
            "users": [{"name": user, "user": dict(credentials)}],
            "contexts": [{"name": user, "context": {"cluster": "devcluster", "user": user}}],
            "current-context": user,
        }

    def write_kubeconfig(self, path: Path, user: str, credentials: Mapping[str, str]) -> Path:
        """Write a kubeconfig for this cluster with the given ``users[].user`` credentials."""
        text = yaml.safe_dump(self._kubeconfig_doc(user, credentials), sort_keys=False)
        return _write(path, text.encode(), 0o600)

    def _write_kubeconfigs(self) -> None:
        pki = self._paths.pki
        self.write_kubeconfig(
            self.kubeconfig,
            "admin",
            {
                "client-certificate": str(self.admin_cert.resolve()),
                "client-key": str(self.admin_key.resolve()),
            },
        )
        self.write_kubeconfig(
            self.run_dir / "controller-manager.kubeconfig",
            "system:kube-controller-manager",
            {
                "client-certificate": str((pki / "controller-manager.crt").resolve()),
                "client-key": str((pki / "controller-manager.key").resolve()),
            },
        )

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.log_file(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop them in order
                preexec_fn=_set_pdeathsig if self.die_with_parent else None,
            )
        proc = _Proc(name=name, popen=popen, log=log, argv=argv)
        # A restarted component keeps its place: stop() ends them in reverse start order.
        index = next((i for i, p in enumerate(self._procs) if p.name == name), None)
        if index is None:
            self._procs.append(proc)
        else:
            self._procs[index] = proc

    def _wait_until(self, name: str, deadline: float, probe: Any, watched: Sequence[str] | None = None) -> None:
        delay = 0.05
        last = ""
        while True:
            self.check_alive(watched)
            try:
                ok, last = probe()
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                ok, last = False, f"{type(exc).__name__}: {exc}"
            if ok:
                return
            if time.monotonic() > deadline:
                raise DevClusterError(
                    f"{name} not ready after {self.start_timeout:.0f}s (last probe: {last}); "
                    f"last lines of {self.log_file(name)}:\n{self.log_tail(name)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _etcd_healthy(self) -> tuple[bool, str]:
        host, port = self.etcd_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", "/health")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        finally:
            conn.close()
        return resp.status == 200 and '"true"' in body, f"HTTP {resp.status} {body[:200]}"

    def _apiserver_ready(self) -> tuple[bool, str]:
        status, body = self.request("GET", "/readyz", timeout=5)
        return status == 200, f"HTTP {status} {body[-300:].decode(errors='replace')}"

    def _kcm_healthy(self) -> tuple[bool, str]:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert generated by the controller-manager
        conn = http.client.HTTPSConnection("127.0.0.1", self.controller_manager_port, context=ctx, timeout=5)
        try:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        finally:
            conn.close()
        return resp.status == 200, f"HTTP {resp.status} {body[-300:]}"


# --------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so a command's clean-up runs either way."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``build``, ``key`` or ``up``."""
    parser = argparse.ArgumentParser(
        prog="python -m secprofiles.devcluster", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", help="build (or find in the cache) the control-plane binary and print its path"
    )
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    sub.add_parser("key", help="print the cache key and the cached binary path (no build)")
    up = sub.add_parser("up", help="start a dev cluster, print the kubeconfig path, run until Ctrl-C")
    up.add_argument("--dir", type=Path, default=None, help="run directory (default: a temporary one)")
    up.add_argument("--timeout", type=float, default=180.0, help="start-up timeout in seconds")
    up.add_argument("-v", "--verbosity", type=int, default=1, help="klog verbosity of the components")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            t0 = time.monotonic()
            path = ensure_binary(force=args.force)
            _log(f"binary ready in {time.monotonic() - t0:.2f}s")
            print(path)
            return 0
        if args.command == "key":
            print(source_key())
            print(binary_cache_path())
            return 0
        cluster = DevCluster(args.dir, start_timeout=args.timeout, verbosity=args.verbosity)
        with sigterm_as_keyboard_interrupt():
            try:
                with cluster:
                    print(cluster.kubeconfig, flush=True)
                    _log(f"export KUBECONFIG={cluster.kubeconfig}  # Ctrl-C to stop")
                    while True:
                        time.sleep(1)
                        cluster.check_alive()
            except KeyboardInterrupt:
                pass
        return 0
    except DevClusterError as exc:
        _log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
