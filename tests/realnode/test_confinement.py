"""Least privilege on the real node: the agent's token is the one the kubelet issued for its pod (the node-name
claim is real), and with it the agent can change only its own Node's readiness taint and its own
NodeProfileStatus; the kubelet itself is ``system:node:realnode``, not an administrator."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devtools.api import SyncApi
from devtools.realcluster import NODE_NAME, RealCluster
from secprofiles.kube.client import Credentials
from secprofiles.resources import resource_path
from tests.realnode.conftest import Kube, agent_pod, kubelet_token, token_claims

pytestmark = pytest.mark.realnode
OTHER_NODE = "not-this-agents-node"


def test_the_agent_token_from_the_kubelet_can_change_only_its_own_node(
        kube: Kube, real_cluster: RealCluster, report_figure: Callable[[str], None]) -> None:
    pod = agent_pod(kube)
    token = kubelet_token(real_cluster, pod)
    claims = token_claims(token)["kubernetes.io"]
    assert claims["node"]["name"] == NODE_NAME and claims["pod"]["name"] == pod["metadata"]["name"]
    assert claims["serviceaccount"]["name"] == "secprofiles-agent"
    admin = real_cluster.cluster.admin
    admin.request("POST", resource_path("Node"), {"apiVersion": "v1", "kind": "Node",
                                                  "metadata": {"name": OTHER_NODE}}, params={"dryRun": "All"})
    own_status = resource_path("NodeProfileStatus", name=NODE_NAME)
    with SyncApi(Credentials(real_cluster.cluster.server, str(real_cluster.cluster.ca_file), token=token),
                 user_agent="realnode-test-as-agent") as agent:
        node_path = resource_path("Node", name=NODE_NAME)
        label = agent.refusal("PATCH", node_path, {"metadata": {"labels": {"x": "y"}}},
                              content_type="application/merge-patch+json")
        assert label is not None and label.status in (403, 422), label
        taint = agent.refusal("PATCH", node_path, {"spec": {"taints": [
            {"key": "evil", "value": "x", "effect": "NoSchedule"}]}}, content_type="application/merge-patch+json")
        assert taint is not None and taint.status in (403, 422), taint
        other = agent.refusal("PATCH", resource_path("NodeProfileStatus", name=OTHER_NODE),
                              {"status": {"ready": True}}, content_type="application/merge-patch+json")
        assert other is not None and other.status in (403, 404, 422), other
        create_other = agent.refusal("POST", resource_path("NodeProfileStatus"), {
            "apiVersion": "secprofiles.io/v1alpha1", "kind": "NodeProfileStatus",
            "metadata": {"name": OTHER_NODE}}, params={"dryRun": "All"})
        assert create_other is not None and create_other.status in (403, 422), create_other
        # its own report: a dry run of what it does all the time
        own = agent.refusal("PATCH", own_status + "/status", {"status": {"ready": True}},
                            params={"dryRun": "All"}, content_type="application/merge-patch+json")
        assert own is None, own
        secret = agent.refusal("GET", resource_path("Secret", namespace="secprofiles-system"))
        assert secret is not None and secret.status == 403
    report_figure(f"agent token from the kubelet: node claim {claims['node']['name']}, pod {claims['pod']['name']}; "
                  f"refused: label own Node ({label.status}), add a taint ({taint.status}), another node's report "
                  f"({other.status}, create {create_other.status}), Secrets ({secret.status}); own report allowed")


def test_the_kubelet_is_a_node_not_an_administrator(kube: Kube) -> None:
    whoami = kube.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                          f"--kubeconfig={kube.cluster.directory / 'kubelet.kubeconfig'}")
    assert whoami == f"system:node:{NODE_NAME}"
    can = kube.kubectl("auth", "can-i", "list", "secrets", "--all-namespaces",
                       f"--kubeconfig={kube.cluster.directory / 'kubelet.kubeconfig'}", check=False)
    assert can.strip().split()[0] == "no", can  # "no - can only read namespaced object of this type"
