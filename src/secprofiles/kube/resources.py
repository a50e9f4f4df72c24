"""Where a kind lives in the Kubernetes API: ``ApiResource`` and its paths, for Kubernetes' own kinds.

Custom resources are not listed here: ``ApiResource.from_crd`` reads one from its CRD, and the caller that knows
the CRDs combines both (``secprofiles.resources``), so this plumbing knows no profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from secprofiles.objects import Object


@dataclass(frozen=True)
class ApiResource:
    """A kind's API group, version, plural resource name and scope."""

    group: str
    version: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The collection path (all namespaces without ``namespace``), or one object's path, or its subresource."""
        path = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{self.plural}"
        if name:
            path += f"/{quote(name, safe='')}"
        if subresource:
            path += f"/{subresource}"
        return path

    @classmethod
    def from_crd(cls, crd: Object, version: str) -> ApiResource:
        """The resource a CustomResourceDefinition serves at ``version``."""
        spec = crd["spec"]
        return cls(spec["group"], version, spec["names"]["plural"], spec["scope"] == "Namespaced")


def _core(plural: str, namespaced: bool) -> ApiResource:
    return ApiResource("", "v1", plural, namespaced)


_RBAC, _ADMISSION = "rbac.authorization.k8s.io", "admissionregistration.k8s.io"

#: Kubernetes' own kinds that secprofiles and its dev tooling read or write.
BUILTIN: Mapping[str, ApiResource] = {
    "Namespace": _core("namespaces", False),
    "Node": _core("nodes", False),
    "Pod": _core("pods", True),
    "Event": _core("events", True),
    "Secret": _core("secrets", True),
    "ConfigMap": _core("configmaps", True),
    "Service": _core("services", True),
    "ServiceAccount": _core("serviceaccounts", True),
    "Lease": ApiResource("coordination.k8s.io", "v1", "leases", True),
    "CustomResourceDefinition": ApiResource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False),
    "ClusterRole": ApiResource(_RBAC, "v1", "clusterroles", False),
    "ClusterRoleBinding": ApiResource(_RBAC, "v1", "clusterrolebindings", False),
    "Role": ApiResource(_RBAC, "v1", "roles", True),
    "RoleBinding": ApiResource(_RBAC, "v1", "rolebindings", True),
    "ValidatingAdmissionPolicy": ApiResource(_ADMISSION, "v1", "validatingadmissionpolicies", False),
    "ValidatingAdmissionPolicyBinding": ApiResource(_ADMISSION, "v1", "validatingadmissionpolicybindings", False),
    "MutatingWebhookConfiguration": ApiResource(_ADMISSION, "v1", "mutatingwebhookconfigurations", False),
    "ValidatingWebhookConfiguration": ApiResource(_ADMISSION, "v1", "validatingwebhookconfigurations", False),
    "Deployment": ApiResource("apps", "v1", "deployments", True),
    "DaemonSet": ApiResource("apps", "v1", "daemonsets", True),
    "PodDisruptionBudget": ApiResource("policy", "v1", "poddisruptionbudgets", True),
    "NetworkPolicy": ApiResource("networking.k8s.io", "v1", "networkpolicies", True),
    "ResourceQuota": _core("resourcequotas", True),
}
