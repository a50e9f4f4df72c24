"""A real, local Kubernetes control plane for integration tests, benchmarks and the sandbox.

etcd (embedded), kube-apiserver, kube-controller-manager and, for a real node, kube-scheduler of a pinned Kubernetes
release, from the multi-call binary ``devtools.build`` makes, run as supervised processes (``devtools.processes``)
on free ports with TLS, RBAC, service-account tokens and the default admission plugins (including the admission
webhooks and ValidatingAdmissionPolicy). The API server listens on loopback, or on an address of the machine that
pods can reach (``address``; ``devtools.realcluster``), then with its endpoint reconciler on. ``DevCluster`` waits
for ``/readyz``, writes an admin kubeconfig, offers an admin client (``admin``, a ``SyncApi``) and stops exactly
the processes it started.

Command line::

    python -m devtools.cluster build            # build (or find) the binary, print its path
    python -m devtools.cluster key              # the cache key and the binary's path, no build
    python -m devtools.cluster up --dir DIR     # start, print the kubeconfig path, run until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from devtools.api import SyncApi
from devtools.build import BuildError, binary_cache_path, ensure_binary, source_key
from devtools.clusterpki import SERVICE_CLUSTER_IP_RANGE, ClusterPki, write_kubeconfig
from devtools.ports import free_ports
from devtools.processes import Process, ProcessExitedError
from secprofiles.kube.client import ApiError, Credentials
from secprofiles.kube.pki import CertificateAuthority

#: Service-account token issuer (and default API audience) of the dev cluster.
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc"
#: Controllers run by kube-controller-manager. The node lifecycle controller is off so that simulated Node objects
#: (which have no kubelet heart-beating) stay Ready.
DEFAULT_CONTROLLERS: Final = "*,-node-lifecycle-controller"
COMPONENTS: Final = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
LOOPBACK: Final = "127.0.0.1"


class DevClusterError(RuntimeError):
    """The control plane failed to start or answer."""


def _log(message: str) -> None:
    print(f"devcluster: {message}", file=sys.stderr, flush=True)


Probe = Callable[[], tuple[bool, str]]


class DevCluster:
    """A local etcd + kube-apiserver + kube-controller-manager on loopback ports.

    Use as a context manager (or call :meth:`start` / :meth:`stop`)::

        with DevCluster(tmp_path) as cluster:
            print(cluster.kubeconfig, cluster.server, cluster.version)
            cluster.admin.get("/api/v1/namespaces/default")

    After :meth:`start`: ``kubeconfig``, ``server``, ``ca_file``, ``pki``, ``admin``, ``version``,
    ``startup_seconds`` (until the API server is ready and the controller-manager healthy) and
    ``apiserver_ready_seconds``; after :meth:`stop`, ``peak_rss_bytes`` (the sum of the processes' VmHWM) and
    ``peak_rss_by_process``.
    """

    def __init__(self, run_dir: Path | str | None = None, *, binary: Path | str | None = None,
                 start_timeout: float = 180.0, stop_grace: float = 15.0, controllers: str = DEFAULT_CONTROLLERS,
                 verbosity: int = 1, apiserver_args: Sequence[str] = (), controller_manager_args: Sequence[str] = (),
                 wait_for_controller_manager: bool = True, quiet: bool = False, address: str = LOOPBACK,
                 scheduler: bool = False, apiserver_port: int = 0) -> None:
        """Configure (but do not start) a dev cluster.

        ``run_dir`` holds certificates, etcd data, logs and the kubeconfig; a temporary directory is made (and
        removed again by :meth:`stop` unless the start failed) when it is ``None``. ``binary`` defaults to
        ``devtools.build.ensure_binary()``. ``apiserver_args`` / ``controller_manager_args`` are appended to (and so
        override) the generated flags. ``address``: where the API server listens and what it advertises (not
        loopback: pods reach it through the ``kubernetes`` Service). ``scheduler``: run kube-scheduler too (nodes
        with a kubelet). ``apiserver_port``: a fixed port (default: a free one). The processes die with the thread
        that starts them (start from the main thread), so a crashed run leaves no servers behind.
        """
        self._own_dir = run_dir is None
        self.run_dir = (Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="devcluster-"))
                        ).resolve()
        self._binary = Path(binary) if binary is not None else None
        self.start_timeout, self.stop_grace = start_timeout, stop_grace
        self.controllers, self.verbosity = controllers, verbosity
        self.apiserver_args, self.controller_manager_args = list(apiserver_args), list(controller_manager_args)
        self.wait_for_controller_manager, self.quiet = wait_for_controller_manager, quiet
        self.address, self.with_scheduler = address, scheduler
        self.scheduler_port, self._requested_port = 0, apiserver_port
        self._processes: dict[str, Process] = {}
        self._admin: SyncApi | None = None
        self._failed = False
        self.kubeconfig = self.run_dir / "kubeconfig"
        self.pki_dir, self.logs_dir = self.run_dir / "pki", self.run_dir / "logs"
        self.ca_file = self.pki_dir / "ca.crt"
        self.pki: ClusterPki | None = None
        self.server, self.version, self.etcd_url = "", "", ""
        self.apiserver_port = self.controller_manager_port = 0
        self.startup_seconds = self.apiserver_ready_seconds = 0.0
        self.peak_rss_bytes = 0
        self.peak_rss_by_process: dict[str, int] = {}

    # ---------------------------------------------------------------- public API

    @property
    def binary(self) -> Path:
        """The binary in use (built on first access if not given)."""
        if self._binary is None:
            self._binary = ensure_binary()
        return self._binary

    @property
    def ca(self) -> CertificateAuthority:
        """The cluster CA (e.g. to sign a test webhook's serving certificate)."""
        if self.pki is None:
            raise DevClusterError("dev cluster is not started")
        return self.pki.ca

    @property
    def admin(self) -> SyncApi:
        """An admin client (``system:masters``) of the running cluster."""
        if self._admin is None:
            raise DevClusterError("dev cluster is not started")
        return self._admin

    @property
    def running(self) -> bool:
        """Whether every started process is still alive."""
        return bool(self._processes) and all(p.running for p in self._processes.values())

    def log_file(self, name: str) -> Path:
        """The log of a component (``etcd``, ``kube-apiserver``, ``kube-controller-manager``, ``kube-scheduler``)."""
        return self.logs_dir / f"{name}.log"

    def log_tails(self, lines: int = 40) -> str:
        """The tails of all component logs, for error reports."""
        return "\n".join(f"----- {p.log} (last {lines} lines) -----\n{p.tail(lines)}"
                         for p in self._processes.values() if p.log.exists())

    def write_kubeconfig(self, path: Path, user: str, credentials: Mapping[str, str]) -> Path:
        """A kubeconfig for this cluster with the given ``users[].user`` credentials."""
        return write_kubeconfig(path, self.server, self.ca_file, user, credentials)

    def start(self) -> DevCluster:
        """Start etcd, kube-apiserver and kube-controller-manager; return when ready.

        The free ports are picked just before the components bind them; if another process grabs one in between,
        the whole start is retried with new ports.
        """
        if self._processes:
            raise DevClusterError("dev cluster already started")
        binary = self.binary  # build outside the start-up clock
        t0 = time.monotonic()
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(binary, t0)
                break
            except DevClusterError as error:
                self._failed = True
                self.stop()
                if attempt == attempts or "address already in use" not in str(error):
                    raise
                _log(f"a port was taken by someone else ({error.args[0].splitlines()[0]}); retrying")
                shutil.rmtree(self.run_dir / "etcd", ignore_errors=True)
                self._failed = False
            except BaseException:
                self._failed = True
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - t0
        if not self.quiet:
            _log(f"control plane {self.version} ready at {self.server} in {self.startup_seconds:.1f}s "
                 f"(apiserver /readyz after {self.apiserver_ready_seconds:.1f}s; kubeconfig {self.kubeconfig})")
        return self

    def stop(self) -> None:
        """Stop every process this object started, in reverse order (SIGTERM, then SIGKILL after ``stop_grace``)."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        processes, self._processes = self._processes, {}
        for process in reversed(processes.values()):  # controller-manager, apiserver, etcd
            process.stop(grace=self.stop_grace)
        if processes:
            self.peak_rss_by_process = {name: p.peak_rss_bytes for name, p in processes.items()}
            self.peak_rss_bytes = sum(self.peak_rss_by_process.values())
            if not self.quiet:
                detail = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in self.peak_rss_by_process.items())
                _log(f"stopped; peak RSS {self.peak_rss_bytes / 2**20:.0f} MiB ({detail})")
        if self._own_dir and not self._failed:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def kill_component(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one running component with ``sig``; the others keep running. For fault-injection tests."""
        self._process(name).stop(sig, grace=self.stop_grace)

    def start_component(self, name: str, timeout: float | None = None) -> float:
        """Start a component stopped by :meth:`kill_component` again, with the same arguments, ports and data
        directory; return once it is ready (and the API server with it), with the seconds that took."""
        process = self._process(name)
        if process.running:
            raise DevClusterError(f"{name} is still running")
        started = time.monotonic()
        deadline = started + (timeout or self.start_timeout)
        with process.log.open("ab") as out:
            out.write(f"----- restarted by the test harness (exit status {process.returncode}) -----\n".encode())
        process.start()
        self._wait_until(name, deadline, self._probes()[name], watched=[name])
        if name == "etcd" and self._process("kube-apiserver").running:  # its /readyz includes etcd: wait for it
            self._wait_until("kube-apiserver", deadline, self._apiserver_ready, watched=["kube-apiserver"])
        ready = time.monotonic() - started
        # kube-controller-manager exits when it loses the API server at the wrong moment (a kubelet would restart
        # it): do the same, off the clock.
        manager = self._processes.get("kube-controller-manager")
        if name != "kube-controller-manager" and manager is not None and not manager.running:
            self.start_component("kube-controller-manager", timeout)
        return ready

    def check_alive(self, names: Sequence[str] | None = None) -> None:
        """Raise :class:`DevClusterError` (with the log tail) if a component (of ``names``, default all) exited."""
        for name, process in self._processes.items():
            if names is None or name in names:
                try:
                    process.check()
                except ProcessExitedError as error:
                    raise DevClusterError(str(error)) from None

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- start-up

    def _start_once(self, binary: Path, t0: float) -> None:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        self.pki = ClusterPki.create(self.pki_dir, [] if self.address == LOOPBACK else [self.address])
        etcd_client, etcd_peer, api_port, kcm_port, scheduler_port = free_ports(5)
        self.etcd_url = f"http://127.0.0.1:{etcd_client}"
        self.apiserver_port, self.controller_manager_port = self._requested_port or api_port, kcm_port
        self.scheduler_port = scheduler_port
        self.server = f"https://{self.address}:{self.apiserver_port}"
        deadline = time.monotonic() + self.start_timeout

        self._spawn("etcd", [str(binary), "etcd", *self._etcd_args(etcd_client, etcd_peer)])
        self._wait_until("etcd", deadline, self._etcd_healthy)
        admin_cert, admin_key = self.pki.file("admin.crt"), self.pki.file("admin.key")
        self.write_kubeconfig(self.kubeconfig, "admin", {"client-certificate": str(admin_cert),
                                                           "client-key": str(admin_key)})
        self._admin = SyncApi(Credentials(self.server, str(self.ca_file), str(admin_cert), str(admin_key)),
                              user_agent="secprofiles-devcluster")
        self._spawn("kube-apiserver", [str(binary), "kube-apiserver", *self._apiserver_args()])
        self._wait_until("kube-apiserver", deadline, self._apiserver_ready)
        self.apiserver_ready_seconds = time.monotonic() - t0

        kcm_cert, kcm_key = self.pki.file("controller-manager.crt"), self.pki.file("controller-manager.key")
        self.write_kubeconfig(self.run_dir / "controller-manager.kubeconfig", "system:kube-controller-manager",
                              {"client-certificate": str(kcm_cert), "client-key": str(kcm_key)})
        self._spawn("kube-controller-manager", [str(binary), "kube-controller-manager", *self._kcm_args()])
        if self.with_scheduler:
            sched_cert, sched_key = self.pki.file("scheduler.crt"), self.pki.file("scheduler.key")
            self.write_kubeconfig(self.run_dir / "scheduler.kubeconfig", "system:kube-scheduler",
                                  {"client-certificate": str(sched_cert), "client-key": str(sched_key)})
            self._spawn("kube-scheduler", [str(binary), "kube-scheduler", *self._scheduler_args()])
        if self.wait_for_controller_manager:
            self._wait_until("kube-controller-manager", deadline, self._kcm_healthy)
        if self.with_scheduler:
            self._wait_until("kube-scheduler", deadline, self._scheduler_healthy)
        self.version = str(self.admin.request("GET", "/version")["gitVersion"])

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._processes[name] = Process(name, argv, self.log_file(name), cwd=self.run_dir,
                                        die_with_parent=True).start()

    def cpu_seconds(self, name: str) -> float:
        """CPU time component ``name`` has used so far (benchmarks' unit costs)."""
        return self._process(name).cpu_seconds()

    def _process(self, name: str) -> Process:
        if name not in self._processes:
            raise DevClusterError(f"no component named {name!r} was started")
        return self._processes[name]

    def _etcd_args(self, client_port: int, peer_port: int) -> list[str]:
        return [
            "--name=devcluster",
            f"--data-dir={self.run_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # throw-away test data: speed over durability
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self.pki_dir
        return [
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={self.apiserver_port}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            # The 'kubernetes' Endpoints may not hold a loopback address; on loopback nothing needs them.
            f"--endpoint-reconciler-type={'none' if self.address == LOOPBACK else 'lease'}",
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
            # To kubelets (logs, exec): its own client certificate, the kubelets' serving certificates from the CA.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={self.ca_file}",
            "--kubelet-preferred-address-types=InternalIP",
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
        kubeconfig = self.run_dir / "controller-manager.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--service-account-private-key-file={self.pki_dir / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            f"--cluster-signing-cert-file={self.ca_file}",
            f"--cluster-signing-key-file={self.pki_dir / 'ca.key'}",
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

    def _scheduler_args(self) -> list[str]:
        kubeconfig = self.run_dir / "scheduler.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.scheduler_port}",
            "--profiling=false",
            f"--v={self.verbosity}",
        ]

    # ---------------------------------------------------------------- readiness

    def _probes(self) -> dict[str, Probe]:
        return {"etcd": self._etcd_healthy, "kube-apiserver": self._apiserver_ready,
                "kube-controller-manager": self._kcm_healthy, "kube-scheduler": self._scheduler_healthy}

    def _wait_until(self, name: str, deadline: float, probe: Probe, watched: Sequence[str] | None = None) -> None:
        delay, last = 0.05, ""
        while True:
            self.check_alive(watched)
            try:
                ok, last = probe()
            except (OSError, ssl.SSLError, ApiError) as error:
                ok, last = False, f"{type(error).__name__}: {error}"
            if ok:
                return
            if time.monotonic() > deadline:
                raise DevClusterError(f"{name} not ready after {self.start_timeout:.0f}s (last probe: {last}); "
                                      f"last lines of {self.log_file(name)}:\n{self._process(name).tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _etcd_healthy(self) -> tuple[bool, str]:
        return _http_get(f"{self.etcd_url}/health", lambda body: '"true"' in body)

    def _apiserver_ready(self) -> tuple[bool, str]:
        text = self.admin.get_text("/readyz")
        return text.strip() == "ok", text[-300:]

    def _kcm_healthy(self) -> tuple[bool, str]:
        return _self_signed_healthz(self.controller_manager_port)

    def _scheduler_healthy(self) -> tuple[bool, str]:
        return _self_signed_healthz(self.scheduler_port)


def _self_signed_healthz(port: int) -> tuple[bool, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed serving certificate the component made
    return _http_get(f"https://127.0.0.1:{port}/healthz", lambda body: body == "ok", context)


def _http_get(url: str, healthy: Callable[[str], bool], context: ssl.SSLContext | None = None) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            body = response.read().decode(errors="replace")
            return response.status == 200 and healthy(body), f"HTTP {response.status} {body[-300:]}"
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code} {error.read().decode(errors='replace')[-300:]}"


# --------------------------------------------------------------------------- command line


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
    """``build``, ``key`` or ``up``."""
    parser = argparse.ArgumentParser(prog="python -m devtools.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find in the cache) the binary and print its path")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
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
        with sigterm_as_keyboard_interrupt(), contextlib.suppress(KeyboardInterrupt), cluster:
            print(cluster.kubeconfig, flush=True)
            _log(f"export KUBECONFIG={cluster.kubeconfig}  # Ctrl-C to stop")
            while True:
                time.sleep(1)
                cluster.check_alive()
        return 0
    except (DevClusterError, BuildError) as error:
        _log(f"error: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
