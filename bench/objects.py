"""The objects the benchmarks create: profiles, nodes, bindings, pods. Pure builders."""

from __future__ import annotations

from secprofiles.model import nodereport, schema
from secprofiles.objects import Object

BENCH_LABEL = "bench.secprofiles.io/run"


def seccomp_profile(namespace: str, name: str, variant: int = 0) -> Object:
    """A small, valid SeccompProfile; ``variant`` changes its content (a profile change)."""
    names = ["chmod", "fchmodat", "fchmodat2", *["chown", "fchown", "lchown"][:variant % 4]]
    return {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE,
            "metadata": {"name": name, "namespace": namespace, "labels": {BENCH_LABEL: "true"}},
            "spec": {"defaultAction": "SCMP_ACT_ALLOW",
                     "syscalls": [{"names": names, "action": "SCMP_ACT_ERRNO"}]}}


def apparmor_policy(name: str) -> str:
    """The Kubernetes AppArmor example (deny every write) under another profile name."""
    return ("#include <tunables/global>\n"
            f"profile {name} flags=(attach_disconnected) {{\n"
            "  #include <abstractions/base>\n"
            "  file,\n"
            "  deny /** w,\n"
            "}\n")


def apparmor_profile(name: str) -> Object:
    """An AppArmorProfile (cluster-scoped) whose policy compiles with apparmor_parser."""
    return {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE,
            "metadata": {"name": name, "labels": {BENCH_LABEL: "true"}},
            "spec": {"mode": "enforce", "policy": apparmor_policy(name)}}


def node(name: str, tainted: bool) -> Object:
    """A simulated Node; ``tainted``: it starts with the readiness taint, as a new node does."""
    taints = [{"key": nodereport.NOT_READY_TAINT, "effect": "NoSchedule"}] if tainted else []
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", BENCH_LABEL: "true"}},
            "spec": {"taints": taints}}


def binding(namespace: str, name: str, profile: str) -> Object:
    """A ProfileBinding of pods labelled ``app=bench`` to a SeccompProfile."""
    return {"apiVersion": schema.API_VERSION, "kind": schema.PROFILE_BINDING,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"profileRef": {"kind": schema.SECCOMP_PROFILE, "name": profile},
                     "selector": {"matchLabels": {"app": "bench"}}}}


def pod(namespace: str, name: str) -> Object:
    """An unscheduled one-container pod labelled ``app=bench`` (no kubelet runs it)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "bench"}},
            "spec": {"automountServiceAccountToken": False,
                     "containers": [{"name": "app", "image": "registry.local/busybox:1.36"}]}}
