"""Webhook failure modes: the shipped webhook configuration, called by the real API server, against fault servers.

manifests/base/webhook.yaml is registered unchanged except for its clientConfig (a URL on 127.0.0.1) and, for the
overlay variant, failurePolicy Fail. A real HTTPS server on loopback then misbehaves one way at a time: down
(nothing listening), slow (answers after timeoutSeconds), HTTP 500, a body that is not JSON, an AdmissionReview
for another request (wrong uid), an explicit denial, a JSON patch that does not apply. For each, pods are created
in namespaces that did not opt in (no label, label not "enabled", the excluded kube-system and secprofiles-system
even when labelled) and in an opted-in namespace. What is asserted per pod comes from the configuration itself:
opted-out pods never reach the webhook; call failures follow failurePolicy; answers (denial, patch) are never
covered by it. The API server's own admission metrics confirm the counts. Finally the operator serves again
and pods are bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import ssl
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.cluster import DevCluster
from devtools.commands import REPO
from devtools.objects import create_node, ensure_namespace, install_crds
from devtools.waiting import wait_for
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.resources import resource_path
from tests.integration.kube import (
    WebhookTLS,
    apply_admission_policies,
    cluster_renderings,
    open_api,
    webhook_config,
    webhook_tls,
)
from tests.integration.processes import WebhookOperator
from tests.integration.test_operator import report

pytestmark = pytest.mark.controlplane

SHIPPED = yaml.safe_load((REPO / "manifests/base/webhook.yaml").read_text())
CONFIG = SHIPPED["metadata"]["name"]
WEBHOOK = SHIPPED["webhooks"][0]
WEBHOOK_NAME, TIMEOUT, POLICY = WEBHOOK["name"], int(WEBHOOK["timeoutSeconds"]), WEBHOOK["failurePolicy"]
CONFIG_PATH = resource_path("MutatingWebhookConfiguration", name=CONFIG)
OPT_IN_LABEL = "secprofiles.io/binding"
OPTED = "wf-team"
# Not opted in: no label, a label that is not "enabled", and the namespaces the selector excludes by name even
# when they carry the label (the operator's own pods must never wait for the operator).
OPTED_OUT = {"wf-plain": None, "wf-disabled": "disabled", "kube-system": "enabled", "secprofiles-system": "enabled"}
TEST_LABEL = "secprofiles.io/webhook-failures-test"
PODS = 10  # per mode and side; created concurrently, so the slow mode costs one timeout, not ten
OPTED_OUT_DEADLINE = 1.5  # seconds, far below timeoutSeconds (margin for a loaded machine); the call counts are exact
PROFILE = "wf-chmod"


@dataclass(frozen=True)
class Mode:
    """One misbehaviour. ``call_failure``: the API server cannot get an answer, so failurePolicy decides."""

    name: str
    call_failure: bool


MODES = {m.name: m for m in (
    Mode("down", True),  # connection refused
    Mode("slow", True),  # answers after timeoutSeconds
    Mode("http-500", True),
    Mode("not-json", True),
    Mode("wrong-uid", True),  # a well-formed AdmissionReview for another request
    Mode("deny", False),  # allowed: false with an error status: an answer, not a failure
    Mode("bad-patch", False),  # allowed, with a JSON patch that does not apply to the pod
)}


class FaultServer:
    """An HTTPS server on 127.0.0.1 answering AdmissionReviews in the current ``mode``; counts requests per path.

    Threads, not the test's event loop: a slow answer must not hold up the test's own API calls.
    """

    def __init__(self, tls: WebhookTLS) -> None:
        self.tls, self.port, self.mode = tls, 0, "allow"
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def requests(self) -> int:
        """Requests received since the last :meth:`reset`."""
        with self._lock:
            return len(self.paths)

    def reset(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self.paths.clear()

    def seen(self, path_prefix: str) -> bool:
        """Whether a request for a path starting with ``path_prefix`` arrived since the last :meth:`reset`."""
        with self._lock:
            return any(path.startswith(path_prefix) for path in self.paths)

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections."""
        return self._server is not None

    def start(self) -> None:
        """Listen (again, on the same port after :meth:`stop`)."""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.paths.append(self.path)
                try:
                    status, answer = owner.answer(body)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the API server gave up waiting (slow mode)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            # The default backlog (5) drops SYNs when all pods arrive at once: a 1 s retransmit, not our fault.
            request_queue_size = 64

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
        server = Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        # The handshake happens in the handler's thread, so one slow client cannot stall accept().
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = server.server_address[1]
        self._stopping.clear()
        self._server = server
        threading.Thread(target=server.serve_forever, name="fault-server", daemon=True).start()

    def stop(self) -> None:
        """Stop listening: connections to the port are refused (the webhook process is down)."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def answer(self, body: bytes) -> tuple[int, bytes]:
        """The HTTP status and body for one AdmissionReview, as the current mode has it."""
        mode = self.mode
        if mode == "slow":
            self._stopping.wait(TIMEOUT + 2)
        if mode == "http-500":
            return 500, b'{"message": "fault server: internal error"}'
        if mode == "not-json":
            return 200, b"{this is not json"
        uid = json.loads(body)["request"]["uid"]
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        if mode == "wrong-uid":
            response["uid"] = "not-" + uid
        elif mode == "deny":
            response = {"uid": uid, "allowed": False, "status": {"code": 500, "message": "fault server: denied"}}
        elif mode == "bad-patch":
            patch = [{"op": "remove", "path": "/metadata/annotations/not-there"}]
            response.update(patchType="JSONPatch", patch=base64.b64encode(json.dumps(patch).encode()).decode())
        return 200, json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                "response": response}).encode()


@dataclass
class Created:
    """One pod create: how long it took, and the stored pod or the refusal's message."""

    namespace: str
    seconds: float
    pod: dict[str, Any] | None = None
    refusal: str = ""


def pod(name: str, namespace: str, localhost_profile: str | None = None) -> dict[str, Any]:
    """A pod that asks to be bound: a working webhook would give its container a seccomp profile.

    With ``localhost_profile`` its container names a seccomp file itself.
    """
    container: dict[str, Any] = {"name": "app", "image": "registry.local/busybox:1.36"}
    if localhost_profile:
        container["securityContext"] = {"seccompProfile": {"type": "Localhost", "localhostProfile": localhost_profile}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {TEST_LABEL: "1"},
                         "annotations": {"secprofiles.io/seccomp-profile": PROFILE}},
            "spec": {"containers": [container]}}


def unbound(created: Created) -> bool:
    """Admitted exactly as sent: no profile set, no record of one."""
    assert created.pod is not None
    return ("securityContext" not in created.pod["spec"]["containers"][0]
            and "secprofiles.io/profiles" not in (created.pod["metadata"].get("annotations") or {}))


async def create_pods(api: KubeApi, prefix: str, namespaces: list[str],
                      localhost_profile: str | None = None) -> list[Created]:
    """Create one pod per entry of ``namespaces``, all at once; time each create."""
    async def one(index: int, namespace: str) -> Created:
        started = time.monotonic()
        body = pod(f"{prefix}-{index}", namespace, localhost_profile)
        try:
            stored = await api.create(resource_path("Pod", namespace), body)
            return Created(namespace, time.monotonic() - started, pod=stored)
        except ApiError as error:
            return Created(namespace, time.monotonic() - started, refusal=error.message)

    return list(await asyncio.gather(*(one(i, ns) for i, ns in enumerate(namespaces))))


def webhook_metrics(cluster: DevCluster) -> dict[str, float]:
    """The API server's admission-webhook counters for our webhook: calls, fail-open admissions, rejections."""
    totals = {"calls": 0.0, "fail_open": 0.0, "rejections": 0.0}
    for line in cluster.admin.get_text("/metrics").splitlines():
        if f'name="{WEBHOOK_NAME}"' not in line:
            continue
        for key, metric in (("calls", "apiserver_admission_webhook_request_total{"),
                            ("fail_open", "apiserver_admission_webhook_fail_open_count{"),
                            ("rejections", "apiserver_admission_webhook_rejection_count{")):
            if line.startswith(metric):
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def latency(results: list[Created]) -> str:
    times = sorted(r.seconds for r in results)
    return f"p50 {statistics.median(times) * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms"


def _delete_config(cluster: DevCluster) -> None:
    cluster.admin.delete(CONFIG_PATH)


@pytest.fixture(scope="module")
def cleanup(devcluster: DevCluster) -> Iterator[None]:
    """Whatever happens, leave no webhook configuration (it would point at a dead server), no labels, no pods."""
    _delete_config(devcluster)
    try:
        yield
    finally:
        _delete_config(devcluster)
        for namespace, value in OPTED_OUT.items():
            if value == "enabled":
                with contextlib.suppress(ApiError):  # a namespace that was never made
                    devcluster.admin.patch(resource_path("Namespace", name=namespace),
                                           {"metadata": {"labels": {OPT_IN_LABEL: None}}})
        for namespace in (OPTED, *OPTED_OUT):
            with contextlib.suppress(ApiError):
                devcluster.admin.request("DELETE", resource_path("Pod", namespace),
                                         params={"labelSelector": f"{TEST_LABEL}=1"})


@pytest.fixture(scope="module")
def server(cleanup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    fault = FaultServer(webhook_tls(tmp_path_factory.mktemp("fault-server")))
    fault.start()
    try:
        yield fault
    finally:
        fault.stop()


@pytest.fixture
async def api(devcluster: DevCluster, server: FaultServer) -> AsyncIterator[KubeApi]:
    async with open_api(devcluster.kubeconfig) as client:
        for namespace, value in {OPTED: "enabled", **OPTED_OUT}.items():
            await ensure_namespace(client, namespace)
            await client.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": {OPT_IN_LABEL: value}}})
        yield client


async def register(api: KubeApi, server: FaultServer, policy: str) -> None:
    """Register the shipped configuration (``policy`` as failurePolicy) for ``server``; wait until it is in force.

    In force means: the API server calls the new URL (a path of its own per registration) for a dry-run pod.
    """
    if not server.listening:
        server.start()
    server.mode = "allow"
    prefix = f"/{policy.lower()}-{time.monotonic_ns()}"
    config = webhook_config(server.port, path_prefix=prefix, ca_bundle=server.tls.ca_bundle_b64,
                            failure_policy=policy)
    current = await api.get(CONFIG_PATH)
    if current:
        config["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await api.request("PUT", CONFIG_PATH, config)
    else:
        await api.create(CONFIG_PATH.rsplit("/", 1)[0], config)

    async def in_force() -> bool:
        await api.request("POST", resource_path("Pod", OPTED), pod("probe", OPTED), params={"dryRun": "All"})
        return server.seen(prefix)

    await wait_for(in_force, within=30, what=f"the API server calling {prefix}")
    server.reset()


# The shipped policy against every mode; the other policy (the README's overlay) against the call failures, the
# only faults failurePolicy governs.
OTHER = "Fail" if POLICY == "Ignore" else "Ignore"
CASES = [(POLICY, m.name) for m in MODES.values()] + [(OTHER, m.name) for m in MODES.values() if m.call_failure]


@pytest.mark.parametrize(("policy", "mode"), CASES)
async def test_failure_mode(api: KubeApi, devcluster: DevCluster, server: FaultServer, mode: str, policy: str,
                            report_figure: Any) -> None:
    """Opted-out pods: created unchanged and fast, no call. Opted-in pods: as failurePolicy (or the answer) says."""
    await register(api, server, policy)
    fault = MODES[mode]
    if mode == "down":
        server.stop()
    server.mode = mode
    prefix = f"{mode}-{policy.lower()}"
    try:
        before = webhook_metrics(devcluster)
        opted_out_namespaces = [list(OPTED_OUT)[i % len(OPTED_OUT)] for i in range(PODS)]
        outside = await create_pods(api, prefix, opted_out_namespaces)
        after_outside = webhook_metrics(devcluster)
        opted = await create_pods(api, f"{prefix}-in", [OPTED] * PODS)
        after = webhook_metrics(devcluster)
        requests = server.requests
    finally:
        if mode == "down":
            server.start()

    # Opted out: never called, admitted exactly as sent, without waiting.
    assert all(r.pod is not None and unbound(r) for r in outside), [r.refusal for r in outside if r.refusal]
    assert max(r.seconds for r in outside) < OPTED_OUT_DEADLINE, latency(outside)
    assert after_outside == before, (before, after_outside)

    # Opted in: one call per pod; failurePolicy decides for call failures; an answer is never overridden.
    assert after["calls"] - after_outside["calls"] == PODS
    assert requests == (0 if mode == "down" else PODS)
    if fault.call_failure and policy == "Ignore":
        assert all(r.pod is not None and unbound(r) for r in opted), [r.refusal for r in opted if r.refusal]
        assert after["fail_open"] - after_outside["fail_open"] == PODS
    else:
        assert all(r.pod is None for r in opted)
        expected = {"deny": "fault server: denied", "bad-patch": "Unable to remove nonexistent key"}.get(
            mode, f'failed calling webhook "{WEBHOOK_NAME}"')
        assert all(expected in r.refusal for r in opted), opted[0].refusal
        assert after["fail_open"] == after_outside["fail_open"]
        assert after["rejections"] - after_outside["rejections"] == PODS
    if mode == "slow":  # each call waited for the timeout, and no longer than a margin beyond it
        assert all(TIMEOUT - 0.2 < r.seconds < TIMEOUT + 3 for r in opted), latency(opted)
    else:  # the API server did not wait for the timeout
        assert max(r.seconds for r in opted) < TIMEOUT, latency(opted)

    outcome = "admitted unbound" if opted[0].pod is not None else "refused"
    report_figure(f"failurePolicy {policy}, {mode}: {PODS} opted-out pods admitted unchanged, 0 calls "
                  f"({latency(outside)}); {PODS} opted-in pods {outcome} ({latency(opted)}), "
                  f"{requests} requests at the fault server, {after['calls'] - after_outside['calls']:.0f} "
                  f"webhook calls / {after['fail_open'] - after_outside['fail_open']:.0f} fail-open "
                  f"per the API server")


async def test_outage_leaves_api_server_guards_and_untrusted_record(api: KubeApi, server: FaultServer,
                                                                   report_figure: Any) -> None:
    """Webhook down (shipped policy): the namespace guard, served by the API server itself, still refuses a
    reference to another namespace's profile; a forged ``secprofiles.io/profiles`` record is admitted as sent,
    so that annotation is only a record when the webhook ran (in-use protection reads the securityContext)."""
    await apply_admission_policies(api, REPO / "manifests/base/namespace-guard.yaml")
    await register(api, server, POLICY)
    server.stop()
    foreign = "secprofiles/other-team/x.json"
    try:
        async def in_force() -> bool:  # the policy takes effect shortly after it is applied
            try:
                await api.request("POST", resource_path("Pod", OPTED), pod("probe", OPTED, foreign),
                                  params={"dryRun": "All"})
            except ApiError:
                return True
            return False

        await wait_for(in_force, what="the namespace guard in force")
        refused = await create_pods(api, "foreign", [OPTED] * PODS, foreign)
        forged = pod("forged", OPTED)
        forged["metadata"]["annotations"]["secprofiles.io/profiles"] = '{"app": ["SeccompProfile/x/y@sha256:0"]}'
        stored = await api.create(resource_path("Pod", OPTED), forged)
    finally:
        server.start()
    assert all(r.pod is None and f"seccomp localhostProfile {foreign} is not a secprofiles profile of namespace "
               f"{OPTED}" in r.refusal for r in refused), refused[0]
    assert stored["metadata"]["annotations"]["secprofiles.io/profiles"] == \
        forged["metadata"]["annotations"]["secprofiles.io/profiles"]
    assert "securityContext" not in stored["spec"]["containers"][0]
    report_figure(f"webhook down: namespace guard refused {len(refused)}/{PODS} pods naming another namespace's "
                  f"profile ({latency(refused)}); 1 forged secprofiles.io/profiles record admitted as sent")


async def _installed_on_every_node(api: KubeApi) -> None:
    """The opted namespace's SeccompProfile, reported Installed by every node (as their agents would)."""
    profile = {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
               "metadata": {"name": PROFILE, "namespace": OPTED},
               "spec": {"defaultAction": "SCMP_ACT_ALLOW",
                        "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}}
    try:
        await api.create(resource_path("SeccompProfile", OPTED), profile)
    except ApiError as error:
        if error.status != 409:
            raise

    async def content_hash() -> str | None:
        status = ((await api.get(resource_path("SeccompProfile", OPTED, PROFILE))) or {}).get("status") or {}
        return status.get("contentHash")

    await wait_for(content_hash, what=f"{PROFILE} contentHash")
    nodes = (await api.request("GET", "/api/v1/nodes"))["items"] or [await create_node(api, "wf-node")]
    everything = await cluster_renderings(api)  # nodes that have every profile of the cluster
    for node in nodes:
        await report(api, node, everything)

    async def installed() -> bool:
        status = ((await api.get(resource_path("SeccompProfile", OPTED, PROFILE))) or {}).get("status") or {}
        return status.get("phase") == "Installed"

    await wait_for(installed, what=f"{PROFILE} Installed")


async def test_recovery_binds_again(api: KubeApi, devcluster: DevCluster, server: FaultServer,
                                    tmp_path: Path, report_figure: Any) -> None:
    """After an outage the operator serves again: opted-in pods are bound, opted-out pods still untouched."""
    await register(api, server, POLICY)
    server.stop()  # the outage: pods admitted meanwhile stay unbound (nothing re-admits them)
    during = await create_pods(api, "outage", [OPTED] * 3)
    assert all(r.pod is not None and unbound(r) for r in during)

    await install_crds(api)
    operator = WebhookOperator(devcluster.kubeconfig, tmp_path, config_name=CONFIG)
    # The shipped configuration, pointing at the operator, which injects its CA when it starts.
    config = webhook_config(operator.port)
    current = await api.get(CONFIG_PATH)
    assert current
    config["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    await api.request("PUT", CONFIG_PATH, config)
    started = time.monotonic()
    operator.start()
    try:
        await _installed_on_every_node(api)

        async def binds() -> bool:
            probe = await api.request("POST", resource_path("Pod", OPTED), pod("probe", OPTED),
                                      params={"dryRun": "All"})
            return "securityContext" in probe["spec"]["containers"][0]

        await wait_for(binds, within=60, what="the operator binding a dry-run pod")
        recovered = time.monotonic() - started
        opted = await create_pods(api, "recovered", [OPTED] * PODS)
        outside = await create_pods(api, "recovered-out", list(OPTED_OUT))
    finally:
        operator.stop()
        server.start()
        print(operator.tail())
    path = f"secprofiles/{OPTED}/{PROFILE}.json"
    assert all(r.pod and r.pod["spec"]["containers"][0]["securityContext"]["seccompProfile"] ==
               {"type": "Localhost", "localhostProfile": path} for r in opted), [r.refusal for r in opted]
    assert all(r.pod is not None and unbound(r) for r in outside)
    report_figure(f"recovery: operator started and binding after {recovered:.1f} s; "
                  f"{PODS}/{PODS} opted-in pods bound ({latency(opted)}); {len(outside)} opted-out pods untouched; "
                  f"{len(during)} pods admitted during the outage stay unbound")
