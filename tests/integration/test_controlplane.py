"""The local control plane is real: CRD schemas, RBAC, GC, namespace deletion, admission, version."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from secprofiles.devcluster import DevCluster, DevClusterError, kubernetes_version
from secprofiles.devcluster_clients import (
    api_client,
    create_node,
    register_webhook,
    service_account_kubeconfig,
    webhook_configuration,
    webhook_tls,
)

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

T = TypeVar("T")


def eventually(fn: Callable[[], T | None], *, timeout: float = 60.0, what: str = "condition") -> T:
    """Call ``fn`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        result = fn()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def namespace(kube_api: Any) -> Iterator[str]:
    """A fresh namespace, deleted afterwards (without waiting)."""
    name = unique("t")
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


# --------------------------------------------------------------------------- version


def test_version_is_stamped(devcluster: DevCluster, kube_api: Any) -> None:
    info = client.VersionApi(kube_api).get_code()
    assert info.git_version == kubernetes_version()
    assert re.fullmatch(r"v1\.34\.\d+", info.git_version)
    assert (info.major, info.minor) == ("1", "34")
    assert devcluster.version == info.git_version


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
def crds(kube_api: Any) -> list[str]:
    """Apply every CRD in crds/ and wait until each is Established; return their names."""
    ext = client.ApiextensionsV1Api(kube_api)
    names = []
    for doc in _crd_documents():
        name = doc["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            doc["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, doc)
        names.append(name)

    def established(name: str) -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    for name in names:
        eventually(lambda n=name: established(n), timeout=60, what=f"CRD {name} Established")  # type: ignore[misc]
    return names


def test_crds_established(crds: list[str]) -> None:
    assert "seccompprofiles.secprofiles.io" in crds


def test_seccompprofile_schema_is_enforced_by_apiserver(
    crds: list[str], kube_api: Any, namespace: str
) -> None:
    api = client.CustomObjectsApi(kube_api)
    group, version, plural = "secprofiles.io", "v1alpha1", "seccompprofiles"

    def body(name: str, action: str) -> dict[str, Any]:
        return {
            "apiVersion": f"{group}/{version}",
            "kind": "SeccompProfile",
            "metadata": {"name": name},
            "spec": {"defaultAction": action},
        }

    def create_ok() -> bool:
        try:
            api.create_namespaced_custom_object(
                group, version, namespace, plural, body("good", "SCMP_ACT_ERRNO")
            )
        except ApiException as exc:
            if exc.status == 404:  # the CRD's REST handler may need a moment after Established
                return False
            raise
        return True

    eventually(create_ok, timeout=30, what="SeccompProfile endpoint")
    got = api.get_namespaced_custom_object(group, version, namespace, plural, "good")
    assert got["spec"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert got["metadata"]["uid"]

    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(group, version, namespace, plural, body("bad", "NOPE"))
    assert err.value.status == 422
    message = json.loads(err.value.body)["message"]
    assert "spec.defaultAction" in message
    assert '"NOPE"' in message
    for action in SCMP_ACTIONS:
        assert action in message, message


# --------------------------------------------------------------------------- RBAC


def test_rbac_denies_service_account_without_rights(
    devcluster: DevCluster, kube_api: Any, namespace: str
) -> None:
    creds = service_account_kubeconfig(devcluster, namespace, "nobody")
    sa_api = api_client(creds.kubeconfig)
    try:
        core = client.CoreV1Api(sa_api)
        for call in (core.list_namespaced_pod, core.list_namespaced_secret):
            with pytest.raises(ApiException) as err:
                call(namespace)
            assert err.value.status == 403
            # authenticated as the service account (not 401/anonymous), refused by RBAC
            assert creds.username in json.loads(err.value.body)["message"]
        with pytest.raises(ApiException) as err:
            core.list_secret_for_all_namespaces()
        assert err.value.status == 403

        # ... and a RoleBinding grants exactly what it says.
        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )

        def can_list_pods() -> bool:
            try:
                core.list_namespaced_pod(namespace)
            except ApiException as exc:
                if exc.status == 403:
                    return False
                raise
            return True

        eventually(can_list_pods, timeout=30, what="RoleBinding to take effect")
        with pytest.raises(ApiException) as err:
            core.list_namespaced_secret(namespace)
        assert err.value.status == 403
    finally:
        sa_api.close()


# --------------------------------------------------------------------------- controllers


def test_garbage_collector_deletes_dependents_of_deleted_node(
    devcluster: DevCluster, kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    node = create_node(devcluster, unique("gc-node"), labels={"secprofiles.io/test": "gc"})
    cm = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(
            name="owned-by-node",
            owner_references=[
                client.V1OwnerReference(
                    api_version="v1", kind="Node", name=node["metadata"]["name"], uid=node["metadata"]["uid"]
                )
            ],
        ),
        data={"k": "v"},
    )
    core.create_namespaced_config_map(namespace, cm)
    core.delete_node(node["metadata"]["name"])

    def gone() -> bool:
        try:
            core.read_namespaced_config_map("owned-by-node", namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    eventually(gone, timeout=90, what="garbage collection of the ConfigMap owned by the deleted Node")


def test_namespace_deletion_completes(kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    name = unique("doomed")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
    # the service-account controller gives every namespace its 'default' SA
    eventually(
        lambda: any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items),
        timeout=60,
        what="default ServiceAccount",
    )
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    eventually(gone, timeout=90, what=f"namespace {name} to be deleted")


def test_simulated_node_is_ready(devcluster: DevCluster, kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    name = unique("node")
    taint = {"key": "secprofiles.io/test", "value": "yes", "effect": "NoSchedule"}
    create_node(devcluster, name, labels={"pool": "a"}, taints=[taint])
    try:
        node = core.read_node(name)
        assert node.metadata.labels["pool"] == "a"
        assert node.metadata.labels["kubernetes.io/hostname"] == name
        assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
            ("secprofiles.io/test", "yes", "NoSchedule")
        ]
        ready = {c.type: c.status for c in node.status.conditions}
        assert ready["Ready"] == "True"
        assert node.status.node_info.container_runtime_version.startswith("containerd://")
    finally:
        core.delete_node(name)


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


def test_validating_webhook_on_loopback(devcluster: DevCluster, kube_api: Any, tmp_path: Path) -> None:
    tls = webhook_tls(tmp_path / "webhook-tls")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    core = client.CoreV1Api(kube_api)
    label = unique("wh")
    name = unique("deny-labelled")
    body = webhook_configuration(
        "Validating",
        name,
        port=server.server_address[1],
        path="/validate",
        ca_bundle=tls.ca_bundle,
        rules=[
            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}
        ],
        object_selector={"matchLabels": {"secprofiles.io/webhook-test": label}},
    )
    register_webhook(devcluster, body)
    try:

        def denied() -> str | None:
            cm = client.V1ConfigMap(
                metadata=client.V1ObjectMeta(
                    generate_name="wh-", labels={"secprofiles.io/webhook-test": label}
                )
            )
            try:
                created = core.create_namespaced_config_map("default", cm)
            except ApiException as exc:
                return str(exc.body) if exc.status == 403 else None
            core.delete_namespaced_config_map(created.metadata.name, "default")
            return None

        message = eventually(denied, timeout=30, what="the webhook to deny")
        assert "denied by the secprofiles test webhook" in message
        # objects outside the selector are untouched
        core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))
        )
        core.delete_namespaced_config_map(name, "default")
    finally:
        client.AdmissionregistrationV1Api(kube_api).delete_validating_webhook_configuration(name)
        server.shutdown()
        server.server_close()


def test_validating_admission_policy_is_enabled(kube_api: Any, namespace: str) -> None:
    adm = client.AdmissionregistrationV1Api(kube_api)
    name = unique("no-forbidden-key")
    adm.create_validating_admission_policy(
        {
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(object.data) || !('forbidden' in object.data)",
                        "message": "no forbidden key",
                    }
                ],
            },
        }
    )
    adm.create_validating_admission_policy_binding(
        {
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        }
    )
    core = client.CoreV1Api(kube_api)
    try:

        def denied() -> str | None:
            cm = client.V1ConfigMap(
                metadata=client.V1ObjectMeta(generate_name="vap-"), data={"forbidden": "1"}
            )
            try:
                created = core.create_namespaced_config_map(namespace, cm)
            except ApiException as exc:
                return str(exc.body) if exc.status in (403, 422) else None
            core.delete_namespaced_config_map(created.metadata.name, namespace)
            return None

        message = eventually(denied, timeout=60, what="the ValidatingAdmissionPolicy to deny")
        assert "no forbidden key" in message
    finally:
        adm.delete_validating_admission_policy_binding(name)
        adm.delete_validating_admission_policy(name)


# --------------------------------------------------------------------------- failure reporting


def test_start_failure_reports_log_tail_and_cleans_up(devcluster: DevCluster, tmp_path: Path) -> None:
    broken = DevCluster(
        tmp_path / "broken", binary=devcluster.binary, apiserver_args=["--no-such-flag"], quiet=True
    )
    with pytest.raises(DevClusterError) as err:
        broken.start()
    message = str(err.value)
    assert "kube-apiserver exited" in message
    assert "unknown flag: --no-such-flag" in message  # from the log tail
    assert not broken.running
    # etcd had been started and was stopped again
    assert set(broken.peak_rss_by_process) == {"etcd", "kube-apiserver"}


def test_start_retries_when_a_port_is_taken(
    devcluster: DevCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from secprofiles import devcluster as module

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
            assert cluster.get("/version")["gitVersion"] == devcluster.version
    finally:
        squatter.close()
