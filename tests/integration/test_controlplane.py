"""The local control plane is real: CRD schemas, RBAC, GC, namespace deletion, admission, version."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.api import SyncApi
from devtools.build import kubernetes_version
from devtools.cluster import DevCluster, DevClusterError
from devtools.objects import create_node, service_account_kubeconfig
from devtools.waiting import eventually
from secprofiles.kube.client import ApiError, Credentials
from secprofiles.resources import resource_path
from tests.integration.kube import webhook_tls

pytestmark = pytest.mark.controlplane

REPO = Path(__file__).resolve().parents[2]
# The repository's CRDs; SECPROFILES_CRDS_DIR points elsewhere for local experiments only.
CRDS_DIR = Path(os.environ.get("SECPROFILES_CRDS_DIR", REPO / "crds"))
SCMP_ACTIONS = [
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(devcluster: DevCluster) -> SyncApi:
    return devcluster.admin


@pytest.fixture
def namespace(admin: SyncApi) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (without waiting)."""
    name = unique("t")
    admin.create(resource_path("Namespace"), {"metadata": {"name": name}})
    yield name
    admin.delete(resource_path("Namespace", name=name))


def refused(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    """The ApiError ``call`` raises (the test fails if it succeeds)."""
    with pytest.raises(ApiError) as error:
        call(*args, **kwargs)
    return error.value


# --------------------------------------------------------------------------- version


def test_version_is_stamped(devcluster: DevCluster, admin: SyncApi) -> None:
    info = admin.request("GET", "/version")
    assert info["gitVersion"] == kubernetes_version()
    assert re.fullmatch(r"v1\.34\.\d+", info["gitVersion"])
    assert (info["major"], info["minor"]) == ("1", "34")
    assert devcluster.version == info["gitVersion"]


# --------------------------------------------------------------------------- CRDs


def _crd_documents() -> list[dict[str, Any]]:
    files = sorted(CRDS_DIR.glob("*.yaml"))
    assert files, f"no CRD manifests in {CRDS_DIR}"
    docs = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                docs.append(doc)
    assert docs, f"no CustomResourceDefinition in {CRDS_DIR}"
    return docs


@pytest.fixture(scope="module")
def crds(devcluster: DevCluster) -> list[str]:
    """Apply every CRD in crds/ and wait until each is Established; return their names."""
    admin = devcluster.admin
    names = []
    for doc in _crd_documents():
        name = doc["metadata"]["name"]
        admin.patch(resource_path("CustomResourceDefinition", name=name), doc, "apply",
                    params={"fieldManager": "secprofiles-tests", "force": "true"})
        names.append(name)

    def established(name: str) -> bool:
        crd = admin.request("GET", resource_path("CustomResourceDefinition", name=name))
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    for name in names:
        eventually(lambda n=name: established(n), timeout=60, what=f"CRD {name} Established")  # type: ignore[misc]
    return names


def test_crds_established(crds: list[str]) -> None:
    assert "seccompprofiles.secprofiles.io" in crds


def test_seccompprofile_schema_is_enforced_by_apiserver(crds: list[str], admin: SyncApi, namespace: str) -> None:
    collection = resource_path("SeccompProfile", namespace)

    def body(name: str, action: str) -> dict[str, Any]:
        return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile", "metadata": {"name": name},
                "spec": {"defaultAction": action}}

    # The CRD's REST handler may need a moment after Established (404 until then: retried).
    eventually(lambda: admin.create(collection, body("good", "SCMP_ACT_ERRNO")), timeout=30,
               what="SeccompProfile endpoint")
    got = admin.request("GET", f"{collection}/good")
    assert got["spec"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert got["metadata"]["uid"]

    error = refused(admin.create, collection, body("bad", "NOPE"))
    assert error.status == 422
    assert "spec.defaultAction" in error.message
    assert '"NOPE"' in error.message
    for action in SCMP_ACTIONS:
        assert action in error.message, error.message


# --------------------------------------------------------------------------- RBAC


def test_rbac_denies_service_account_without_rights(devcluster: DevCluster, admin: SyncApi, namespace: str) -> None:
    creds = admin.call(service_account_kubeconfig, devcluster, namespace, "nobody")
    with SyncApi(Credentials.from_kubeconfig(creds.kubeconfig)) as nobody:
        for path in (resource_path("Pod", namespace), resource_path("Secret", namespace)):
            error = refused(nobody.request, "GET", path)
            assert error.status == 403
            # authenticated as the service account (not 401/anonymous), refused by RBAC
            assert creds.username in error.message
        assert refused(nobody.request, "GET", resource_path("Secret")).status == 403

        # ... and a RoleBinding grants exactly what it says.
        admin.create(resource_path("Role", namespace), {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
        admin.create(resource_path("RoleBinding", namespace), {
            "metadata": {"name": "nobody-reads-pods"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}]})
        eventually(lambda: nobody.request("GET", resource_path("Pod", namespace)), timeout=30,
                   what="RoleBinding to take effect")
        assert refused(nobody.request, "GET", resource_path("Secret", namespace)).status == 403


# --------------------------------------------------------------------------- controllers


def test_garbage_collector_deletes_dependents_of_deleted_node(admin: SyncApi, namespace: str) -> None:
    node = admin.call(create_node, unique("gc-node"), labels={"secprofiles.io/test": "gc"})
    owner = {"apiVersion": "v1", "kind": "Node", "name": node["metadata"]["name"], "uid": node["metadata"]["uid"]}
    admin.create(resource_path("ConfigMap", namespace),
                 {"metadata": {"name": "owned-by-node", "ownerReferences": [owner]}, "data": {"k": "v"}})
    admin.request("DELETE", resource_path("Node", name=node["metadata"]["name"]))
    eventually(lambda: admin.get(resource_path("ConfigMap", namespace, "owned-by-node")) is None, timeout=90,
               what="garbage collection of the ConfigMap owned by the deleted Node")


def test_namespace_deletion_completes(admin: SyncApi) -> None:
    name = unique("doomed")
    admin.create(resource_path("Namespace"), {"metadata": {"name": name}})
    admin.create(resource_path("ConfigMap", name), {"metadata": {"name": "x"}})
    # the service-account controller gives every namespace its 'default' SA
    eventually(lambda: admin.get(resource_path("ServiceAccount", name, "default")), timeout=60,
               what="default ServiceAccount")
    admin.request("DELETE", resource_path("Namespace", name=name))
    eventually(lambda: admin.get(resource_path("Namespace", name=name)) is None, timeout=90,
               what=f"namespace {name} to be deleted")


def test_simulated_node_is_ready(admin: SyncApi) -> None:
    name = unique("node")
    taint = {"key": "secprofiles.io/test", "value": "yes", "effect": "NoSchedule"}
    admin.call(create_node, name, labels={"pool": "a"}, taints=[taint])
    try:
        node = admin.request("GET", resource_path("Node", name=name))
        assert node["metadata"]["labels"]["pool"] == "a"
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == name
        assert node["spec"]["taints"] == [taint]
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    finally:
        admin.delete(resource_path("Node", name=name))


# --------------------------------------------------------------------------- admission


class _DenyHandler(BaseHTTPRequestHandler):
    """Validating webhook: denies every object it is asked about."""

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": False,
                "status": {"code": 403, "message": "denied by the secprofiles test webhook"},
            },
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_validating_webhook_on_loopback(devcluster: DevCluster, admin: SyncApi, tmp_path: Path) -> None:
    tls = webhook_tls(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    label, name = unique("wh"), unique("deny-labelled")
    config_path = resource_path("ValidatingWebhookConfiguration", name=name)
    admin.create(resource_path("ValidatingWebhookConfiguration"), {
        "metadata": {"name": name},
        "webhooks": [{
            "name": f"{name}.secprofiles.io",
            "clientConfig": {"url": f"https://127.0.0.1:{server.server_address[1]}/validate",
                             "caBundle": tls.ca_bundle_b64},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["configmaps"]}],
            "objectSelector": {"matchLabels": {"secprofiles.io/webhook-test": label}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10}]})
    configmaps = resource_path("ConfigMap", "default")
    try:

        def denied() -> str | None:
            body = {"metadata": {"generateName": "wh-", "labels": {"secprofiles.io/webhook-test": label}}}
            try:
                created = admin.create(configmaps, body)
            except ApiError as error:
                return error.message if error.status == 403 else None
            admin.delete(f"{configmaps}/{created['metadata']['name']}")
            return None

        message = eventually(denied, timeout=30, what="the webhook to deny")
        assert "denied by the secprofiles test webhook" in message
        # objects outside the selector are untouched
        admin.create(configmaps, {"metadata": {"name": name}})
        admin.request("DELETE", f"{configmaps}/{name}")
    finally:
        admin.delete(config_path)
        server.shutdown()
        server.server_close()


def test_validating_admission_policy_is_enabled(admin: SyncApi, namespace: str) -> None:
    name = unique("no-forbidden-key")
    admin.create(resource_path("ValidatingAdmissionPolicy"), {
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                    "operations": ["CREATE"], "resources": ["configmaps"]}]},
            "validations": [{"expression": "!has(object.data) || !('forbidden' in object.data)",
                             "message": "no forbidden key"}]}})
    admin.create(resource_path("ValidatingAdmissionPolicyBinding"), {
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}})
    configmaps = resource_path("ConfigMap", namespace)
    try:

        def denied() -> str | None:
            try:
                created = admin.create(configmaps, {"metadata": {"generateName": "vap-"}, "data": {"forbidden": "1"}})
            except ApiError as error:
                return error.message if error.status in (403, 422) else None
            admin.delete(f"{configmaps}/{created['metadata']['name']}")
            return None

        message = eventually(denied, timeout=60, what="the ValidatingAdmissionPolicy to deny")
        assert "no forbidden key" in message
    finally:
        admin.delete(resource_path("ValidatingAdmissionPolicyBinding", name=name))
        admin.delete(resource_path("ValidatingAdmissionPolicy", name=name))


# --------------------------------------------------------------------------- failure reporting


def test_start_failure_reports_log_tail_and_cleans_up(devcluster: DevCluster, tmp_path: Path) -> None:
    broken = DevCluster(tmp_path / "broken", binary=devcluster.binary, apiserver_args=["--no-such-flag"], quiet=True)
    with pytest.raises(DevClusterError) as err:
        broken.start()
    message = str(err.value)
    assert "kube-apiserver exited" in message
    assert "unknown flag: --no-such-flag" in message  # from the log tail
    assert not broken.running
    # etcd had been started and was stopped again
    assert set(broken.peak_rss_by_process) == {"etcd", "kube-apiserver"}


def test_start_retries_when_a_port_is_taken(devcluster: DevCluster, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from devtools import cluster as module

    real_free_ports = module.free_ports
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    calls: list[list[int]] = []

    def free_ports(n: int) -> list[int]:
        ports = real_free_ports(n)
        if not calls:
            ports[2] = squatter.getsockname()[1]  # the API server's port is taken
        calls.append(ports)
        return ports

    monkeypatch.setattr(module, "free_ports", free_ports)
    try:
        with DevCluster(tmp_path / "retry", binary=devcluster.binary, quiet=True) as cluster:
            assert len(calls) == 2
            assert cluster.apiserver_port == calls[1][2] != squatter.getsockname()[1]
            assert cluster.admin.request("GET", "/version")["gitVersion"] == devcluster.version
    finally:
        squatter.close()
