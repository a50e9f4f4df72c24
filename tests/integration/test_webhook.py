"""The pod-binding webhook, served by the operator process, called by the real API server over TLS.

The shipped manifests/base/webhook.yaml is registered with its clientConfig pointed at 127.0.0.1; the
operator injects the CA of its self-managed certificate. Profiles become Installed through NodeProfileStatus
reports written as a node agent would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from devtools.cluster import DevCluster
from devtools.commands import REPO
from devtools.objects import create_node, ensure_namespace, install_crds
from devtools.waiting import wait_for
from secprofiles.controller.admission.webhook import BindingStatusWriter
from secprofiles.controller.state import ClusterState
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.model.evaluate import evaluate
from secprofiles.resources import resource_path
from tests.integration.kube import apply_admission_policies, cluster_renderings, open_api, webhook_config
from tests.integration.processes import WebhookOperator
from tests.integration.test_operator import report
from tests.runtime.conftest import IMAGE, Runner, podman  # noqa: F401  (podman: the session fixture)

pytestmark = pytest.mark.controlplane
NS, OFF, OPERATOR_NS = "wh-team", "wh-off", "secprofiles-system"
CONFIG = "secprofiles"
APPARMOR_NAME = "k8s-apparmor-example-deny-write"
CHMOD_RULES = [{"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}]


@pytest.fixture(scope="module")
def operator(devcluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookOperator]:
    process = WebhookOperator(devcluster.kubeconfig, tmp_path_factory.mktemp("webhook-operator"))
    yield process
    process.stop()


async def _ready_profiles(api: KubeApi) -> None:
    """One SeccompProfile and one AppArmorProfile, Installed on the single node (which reports all profiles)."""
    for other in (await api.request("GET", "/api/v1/nodes"))["items"]:
        if other["metadata"]["name"] != "wh-node":  # left by other modules: they would count as desired nodes
            await api.delete(f"/api/v1/nodes/{other['metadata']['name']}")
    node = await api.get("/api/v1/nodes/wh-node") or await create_node(api, "wh-node")
    for obj in (seccomp_profile("prevent-chmod", syscalls=CHMOD_RULES),
                yaml.safe_load((REPO / f"profiles/apparmor/{APPARMOR_NAME}.yaml").read_text())):
        meta = obj["metadata"]
        try:
            await api.create(resource_path(obj["kind"], meta.get("namespace")), obj)
        except ApiError as error:
            if error.status != 409:
                raise
    for kind, namespace, name in (("SeccompProfile", NS, "prevent-chmod"), ("AppArmorProfile", None, APPARMOR_NAME)):
        await wait_for(lambda k=kind, ns=namespace, n=name: _status(api, k, ns, n, "contentHash"),
                       what=f"{name} contentHash")
    await report(api, node, await cluster_renderings(api))  # a node that has every profile of the cluster
    for kind, namespace, name in (("SeccompProfile", NS, "prevent-chmod"), ("AppArmorProfile", None, APPARMOR_NAME)):
        await wait_for(lambda k=kind, ns=namespace, n=name: _phase(api, k, ns, n, "Installed"), what=f"{name} Installed")


async def _status(api: KubeApi, kind: str, namespace: str | None, name: str, field: str) -> dict[str, Any] | None:
    status = ((await api.get(resource_path(kind, namespace, name))) or {}).get("status") or {}
    return status if status.get(field) else None


async def _phase(api: KubeApi, kind: str, namespace: str | None, name: str, phase: str) -> bool:
    status = ((await api.get(resource_path(kind, namespace, name))) or {}).get("status") or {}
    return status.get("phase") == phase


@pytest.fixture
async def api(devcluster: DevCluster, operator: WebhookOperator) -> AsyncIterator[KubeApi]:
    async with open_api(devcluster.kubeconfig) as client:
        await install_crds(client)
        await ensure_namespace(client, OPERATOR_NS)
        await ensure_namespace(client, OFF)
        await ensure_namespace(client, NS)
        await client.patch(f"/api/v1/namespaces/{NS}", {"metadata": {"labels": {"secprofiles.io/binding": "enabled"}}})
        await client.request("DELETE", f"/api/v1/namespaces/{NS}/pods")
        await client.request("DELETE", f"/api/v1/namespaces/{OFF}/pods")
        await client.request("DELETE", resource_path("ProfileBinding", NS))
        config = webhook_config(operator.port)
        if not await client.get(resource_path("MutatingWebhookConfiguration", name=CONFIG)):
            await client.create(resource_path("MutatingWebhookConfiguration"), config)
        if not operator.running:
            operator.start()
        await _ready_profiles(client)
        yield client
    if operator.popen is not None and not operator.running:
        print(operator.tail())


def seccomp_profile(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": name, "namespace": NS}, "spec": {"defaultAction": "SCMP_ACT_ALLOW", **spec}}


def binding(name: str, kind: str, profile: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "ProfileBinding", "metadata": {"name": name, "namespace": NS},
            "spec": {"profileRef": {"kind": kind, "name": profile}, **spec}}


def pod(name: str, namespace: str = NS, labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, image: str = "registry.local/busybox:1.36",
        security_context: dict[str, Any] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": image}
    if security_context:
        container["securityContext"] = security_context
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"containers": [container, {"name": "side", "image": "registry.local/other:1"}]}}


async def dry_run(api: KubeApi, body: dict[str, Any]) -> dict[str, Any]:
    return await api.request("POST", resource_path("Pod", body["metadata"]["namespace"]), body,
                             params={"dryRun": "All"})


async def until_bound(api: KubeApi, body: dict[str, Any], container: int = 0) -> None:
    """Wait until the operator knows the bindings (watch) and serves with its CA injected: dry runs."""
    async def probe() -> bool:
        created = await dry_run(api, body)
        return "secprofiles.io/profiles" in (created["metadata"].get("annotations") or {})

    await wait_for(probe, within=30, what="the webhook binding a dry-run pod")


def profiles_annotation(obj: dict[str, Any]) -> dict[str, list[str]]:
    return dict(json.loads(obj["metadata"]["annotations"]["secprofiles.io/profiles"]))


async def content_hash(api: KubeApi, kind: str, namespace: str | None, name: str) -> str:
    status = await _status(api, kind, namespace, name, "contentHash")
    assert status
    return str(status["contentHash"])


async def test_ca_injected_from_self_managed_secret(api: KubeApi) -> None:
    secret = await wait_for(lambda: api.get(f"/api/v1/namespaces/{OPERATOR_NS}/secrets/secprofiles-webhook-tls"),
                            what="certificate Secret")

    async def injected() -> str | None:
        config = await api.get(resource_path("MutatingWebhookConfiguration", name=CONFIG))
        return (config or {})["webhooks"][0]["clientConfig"].get("caBundle")

    assert await wait_for(injected, what="caBundle") == secret["data"]["ca-bundle.crt"]


async def test_binding_by_image_and_by_label_both_kinds_with_hash(api: KubeApi) -> None:
    await api.create(resource_path("ProfileBinding", NS),
                     binding("by-image", "SeccompProfile", "prevent-chmod", images=["*/busybox:*"]))
    await api.create(resource_path("ProfileBinding", NS),
                     binding("by-label", "AppArmorProfile", APPARMOR_NAME, selector={"matchLabels": {"app": "web"}}))
    await until_bound(api, pod("probe", labels={"app": "web"}))
    created = await api.create(resource_path("Pod", NS), pod("web", labels={"app": "web"}))
    app, side = created["spec"]["containers"]
    assert app["securityContext"]["seccompProfile"] == {"type": "Localhost",
                                                        "localhostProfile": f"secprofiles/{NS}/prevent-chmod.json"}
    assert app["securityContext"]["appArmorProfile"] == {"type": "Localhost", "localhostProfile": APPARMOR_NAME}
    assert side["securityContext"] == {"appArmorProfile": {"type": "Localhost", "localhostProfile": APPARMOR_NAME}}
    seccomp_hash = await content_hash(api, "SeccompProfile", NS, "prevent-chmod")
    apparmor_hash = await content_hash(api, "AppArmorProfile", None, APPARMOR_NAME)
    assert profiles_annotation(created) == {
        "app": [f"SeccompProfile/{NS}/prevent-chmod@{seccomp_hash}", f"AppArmorProfile/{APPARMOR_NAME}@{apparmor_hash}"],
        "side": [f"AppArmorProfile/{APPARMOR_NAME}@{apparmor_hash}"]}

    # Status: the real pod counted (dry runs are not), written shortly after, not during admission.
    await api.create(resource_path("Pod", NS), pod("web-2", labels={"app": "db"}))
    status = await wait_for(lambda: _status(api, "ProfileBinding", NS, "by-image", "boundPods"), what="boundPods")
    await asyncio.sleep(1.5)
    status = await _status(api, "ProfileBinding", NS, "by-image", "boundPods") or {}
    assert status["boundPods"] == 2 and status["lastBoundTime"] and not status.get("problems")
    label_status = await _status(api, "ProfileBinding", NS, "by-label", "boundPods") or {}
    assert label_status["boundPods"] == 1


async def test_annotation_opt_in_and_explicit_profile_kept(api: KubeApi) -> None:
    opt_in = pod("opt-in", image="registry.local/nginx:1", annotations={
        "secprofiles.io/seccomp-profile": "prevent-chmod", "secprofiles.io/apparmor-profile": APPARMOR_NAME})
    await until_bound(api, opt_in)
    created = await api.create(resource_path("Pod", NS), opt_in)
    for container in created["spec"]["containers"]:
        assert container["securityContext"]["seccompProfile"]["localhostProfile"] == \
            f"secprofiles/{NS}/prevent-chmod.json"
        assert container["securityContext"]["appArmorProfile"]["localhostProfile"] == APPARMOR_NAME
    explicit = pod("explicit", image="registry.local/nginx:1",
                   annotations={"secprofiles.io/seccomp-profile": "prevent-chmod"},
                   security_context={"seccompProfile": {"type": "RuntimeDefault"}})
    created = await api.create(resource_path("Pod", NS), explicit)
    assert created["spec"]["containers"][0]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert profiles_annotation(created) == {"side": [f"SeccompProfile/{NS}/prevent-chmod@"
                                                     f"{await content_hash(api, 'SeccompProfile', NS, 'prevent-chmod')}"]}


async def test_pod_in_namespace_without_opt_in_is_untouched(api: KubeApi) -> None:
    body = pod("plain", namespace=OFF, annotations={"secprofiles.io/seccomp-profile": "prevent-chmod"})
    await until_bound(api, pod("probe", annotations={"secprofiles.io/seccomp-profile": "prevent-chmod"}))
    created = await api.create(resource_path("Pod", OFF), body)
    assert all("securityContext" not in c for c in created["spec"]["containers"])
    assert "secprofiles.io/profiles" not in created["metadata"]["annotations"]


async def test_missing_profile_warn_admits_unchanged_reject_refuses(api: KubeApi) -> None:
    await api.create(resource_path("ProfileBinding", NS),
                     binding("warn", "SeccompProfile", "does-not-exist", images=["*/busybox:*"]))
    status = await wait_for(lambda: _status(api, "ProfileBinding", NS, "warn", "problems"), what="problems")
    assert status["problems"] == [f"SeccompProfile {NS}/does-not-exist not found"]
    created = await api.create(resource_path("Pod", NS), pod("warned"))
    assert all("securityContext" not in c for c in created["spec"]["containers"])

    await api.create(resource_path("ProfileBinding", NS),
                     binding("reject", "AppArmorProfile", "not-there", selector={}, containers=["side"],
                             enforcement="Reject"))

    async def rejected() -> str | None:
        try:
            await dry_run(api, pod("refused"))
        except ApiError as error:
            return error.message
        return None

    message = await wait_for(rejected, what="rejection")
    assert "ProfileBinding reject: AppArmorProfile not-there not found (enforcement: Reject)" in message


async def test_apparmor_annotation_on_pre_130_server(api: KubeApi, operator: WebhookOperator) -> None:
    operator.stop()
    operator.start("--assume-server-version", "v1.29.4")
    try:
        await api.create(resource_path("ProfileBinding", NS),
                         binding("aa", "AppArmorProfile", APPARMOR_NAME, selector={}, containers=["app"]))
        body = pod("old-server")
        await until_bound(api, body)
        created = await api.create(resource_path("Pod", NS), body)
        annotations = created["metadata"]["annotations"]
        assert annotations["container.apparmor.security.beta.kubernetes.io/app"] == f"localhost/{APPARMOR_NAME}"
        assert "appArmorProfile" not in (created["spec"]["containers"][0].get("securityContext") or {}) or \
            created["spec"]["containers"][0]["securityContext"]["appArmorProfile"]["localhostProfile"] == APPARMOR_NAME
        assert list(profiles_annotation(created)) == ["app"]
    finally:
        operator.stop()
        operator.start()


async def test_webhook_down_with_ignore_admits_pods(api: KubeApi, operator: WebhookOperator) -> None:
    await api.create(resource_path("ProfileBinding", NS),
                     binding("by-image", "SeccompProfile", "prevent-chmod", images=["*/busybox:*"]))
    await until_bound(api, pod("probe"))
    operator.stop()
    try:
        started = time.monotonic()
        created = await api.create(resource_path("Pod", NS), pod("while-down"))
        assert time.monotonic() - started < 5
        assert all("securityContext" not in c for c in created["spec"]["containers"])
    finally:
        operator.start()


async def test_namespace_guard_rejects_cross_namespace_reference(api: KubeApi) -> None:
    await apply_admission_policies(api, REPO / "manifests/base/namespace-guard.yaml")

    def with_profile(path: str) -> dict[str, Any]:
        return pod("guarded", namespace=OFF,
                   security_context={"seccompProfile": {"type": "Localhost", "localhostProfile": path}})

    async def refusal(path: str) -> str | None:
        try:
            await dry_run(api, with_profile(path))
        except ApiError as error:
            return error.message
        return None

    message = await wait_for(lambda: refusal(f"secprofiles/{NS}/prevent-chmod.json"), what="VAP in force")
    assert f"seccomp localhostProfile secprofiles/{NS}/prevent-chmod.json is not a secprofiles profile of " \
           f"namespace {OFF}" in message
    assert await refusal(f"./secprofiles/{NS}/prevent-chmod.json")
    assert await refusal(f"secprofiles/{OFF}/mine.json") is None
    assert await refusal("other/profile.json") is None


@pytest.mark.runtime
async def test_bound_pod_is_confined_under_podman(api: KubeApi, podman: Runner, tmp_path: Path) -> None:  # noqa: F811
    await api.create(resource_path("ProfileBinding", NS),
                     binding("by-image", "SeccompProfile", "prevent-chmod", images=["*/busybox:*"]))
    await until_bound(api, pod("probe"))
    created = await api.create(resource_path("Pod", NS), pod("confined"))
    localhost = created["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"]
    stored = await api.get(resource_path("SeccompProfile", NS, "prevent-chmod"))
    assert stored
    outcome = await evaluate(stored)
    assert outcome.rendered and outcome.rendered.content_hash in profiles_annotation(created)["app"][0]
    path = tmp_path / "seccomp" / localhost  # as kubelet joins <root>/seccomp with localhostProfile
    path.parent.mkdir(parents=True)
    path.write_bytes(outcome.rendered.content)
    script = "touch /tmp/f && chmod 600 /tmp/f"
    confined = await asyncio.to_thread(podman, script, path)
    assert confined.returncode != 0 and "Operation not permitted" in confined.stderr
    assert (await asyncio.to_thread(podman, script)).returncode == 0


async def test_handler_latency(api: KubeApi, operator: WebhookOperator) -> None:
    """Round trips of AdmissionReviews straight to the webhook, and the operator's own handler histogram."""
    await api.create(resource_path("ProfileBinding", NS),
                     binding("by-image", "SeccompProfile", "prevent-chmod", images=["*/busybox:*"]))
    await until_bound(api, pod("probe"))
    context = ssl.create_default_context(cadata=base64.b64decode(
        (await api.get(f"/api/v1/namespaces/{OPERATOR_NS}/secrets/secprofiles-webhook-tls") or {})["data"]["ca.crt"]
    ).decode())
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE", "namespace": NS,
        "userInfo": {"username": "test"}, "object": pod("timed"), "dryRun": True}}
    times = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for _ in range(300):
            started = time.perf_counter()
            async with session.post(f"https://127.0.0.1:{operator.port}/bind-pods", json=review) as response:
                answer = await response.json()
            times.append(time.perf_counter() - started)
            assert answer["response"]["allowed"] and answer["response"]["patchType"] == "JSONPatch"
    times.sort()
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics").read().decode())
    lines = [line for line in metrics.splitlines() if line.startswith("secprofiles_webhook_handler_seconds")]
    total = float(next(line for line in lines if line.startswith("secprofiles_webhook_handler_seconds_sum")).split()[1])
    count = float(next(line for line in lines if line.startswith("secprofiles_webhook_handler_seconds_count")).split()[1])
    print(f"\nwebhook round trip over TLS: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms; "
          f"decision mean {total / count * 1e6:.0f} us over {count:.0f} calls; " + "; ".join(lines[:8]))
    assert p99 < 0.5


async def test_two_replicas_counting_bound_pods_lose_no_update(api: KubeApi) -> None:
    """Every replica serves the webhook and adds the pods it admitted to one boundPods count: two status writers
    against the real API server, racing on the same binding, must add up (resourceVersion conflicts retried)."""
    created = await api.create(resource_path("ProfileBinding", NS),
                               binding("counted", "SeccompProfile", "prevent-chmod", images=["*"]))
    state = ClusterState()
    key = state.apply_binding("ADDED", created)
    writers = [BindingStatusWriter(state, api, interval=0.0) for _ in range(2)]
    tasks = [asyncio.create_task(writer.run()) for writer in writers]
    try:
        for _ in range(25):
            for writer in writers:
                writer.bound({key})
            await asyncio.sleep(0.01)
        await wait_for(lambda: _status(api, "ProfileBinding", NS, "counted", "boundPods"), what="a count")
        status = await wait_for(lambda: _count_is(api, "counted", 50), what="all 50 admissions counted")
        assert status["boundPods"] == 50
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _count_is(api: KubeApi, name: str, count: int) -> dict[str, Any] | None:
    status = await _status(api, "ProfileBinding", NS, name, "boundPods") or {}
    return status if status.get("boundPods") == count else None


async def test_the_first_pod_a_restarted_operator_admits_is_bound(api: KubeApi, operator: WebhookOperator) -> None:
    """Kopf serves admissions once the startup handlers are done, while its watches may still be working through
    their first listing: with 2,000 other profiles listed before the bound one, a pod admitted from that half-built
    state would be bound to nothing. The webhook lists profiles and bindings in its startup handler instead."""
    bulk = "aaa-bulk"  # sorts before NS: its profiles come first in the listing
    await ensure_namespace(api, bulk)
    semaphore = asyncio.Semaphore(16)

    async def create(index: int) -> None:
        async with semaphore:
            body = seccomp_profile(f"bulk-{index:04}")
            body["metadata"]["namespace"] = bulk
            try:
                await api.create(resource_path("SeccompProfile", bulk), body)
            except ApiError as error:
                if error.status != 409:  # left by an earlier run
                    raise

    await asyncio.gather(*(create(i) for i in range(2000)))
    await api.create(resource_path("ProfileBinding", NS),
                     binding("first", "SeccompProfile", "prevent-chmod", images=["*"]))
    await until_bound(api, pod("before-restart"))
    operator.stop()
    operator.start()

    async def serving() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", operator.port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await wait_for(serving, within=60, what="the restarted operator's webhook port")
        first = await api.request("POST", resource_path("Pod", NS), pod("first-after-restart"),
                                  params={"dryRun": "All"})
        assert first["spec"]["containers"][0].get("securityContext", {}).get("seccompProfile") == {
            "type": "Localhost", "localhostProfile": f"secprofiles/{NS}/prevent-chmod.json"}, operator.tail()
    finally:
        await api.request("DELETE", resource_path("SeccompProfile", bulk))

        async def bulk_gone() -> bool:  # the operator releases its finalizers: later tests start from a small cluster
            return not (await api.request("GET", resource_path("SeccompProfile", bulk)))["items"]

        await wait_for(bulk_gone, within=180, what="the bulk profiles to be deleted")
