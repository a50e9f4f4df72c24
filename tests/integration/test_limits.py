"""The documented size limits, against the real API server, and the model's agreement on each.

The CRD limits keep every valid object well below etcd's 1.5 MiB request limit: the largest object the limits
allow (plus the API server's 256 KiB of annotations) is created for real. Past a limit the API server answers
422 naming the field (CEL rule included), and so does the model; a body over the API server's 3 MiB request
limit gets 413. Object counts: a ResourceQuota ``count/seccompprofiles.secprofiles.io`` bounds a namespace.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from devtools.cluster import DevCluster
from devtools.objects import ensure_namespace, install_crds
from devtools.waiting import wait_for
from secprofiles.kube.client import ApiError, KubeApi
from secprofiles.model import schema
from secprofiles.resources import resource_path
from tests.integration.kube import open_api

pytestmark = pytest.mark.controlplane
NS = "limits"
ETCD_REQUEST_LIMIT = 1_572_864  # etcd's default --max-request-bytes
API_REQUEST_LIMIT = 3 * 1024 * 1024  # kube-apiserver's --max-request-body-bytes default
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
async def api(devcluster: DevCluster) -> AsyncIterator[KubeApi]:
    async with open_api(devcluster.kubeconfig) as client:
        await install_crds(client)
        await ensure_namespace(client, NS)
        yield client


def dns_name(length: int, prefix: str = "") -> str:
    """A DNS-1123 subdomain of exactly ``length`` characters (63-character labels)."""
    text, label = prefix, "a"
    while len(text) < length:
        room = length - len(text) - (1 if text and not text.endswith("/") else 0)
        piece = label * min(63, room)
        text = f"{text}.{piece}" if text and not text.endswith("/") else text + piece
        label = chr(ord(label) + 1)
    return text


def rules(count: int, names_each: int, name_length: int = 64, args: int = 6) -> list[dict[str, Any]]:
    arg = {"index": 5, "op": "SCMP_CMP_MASKED_EQ", "value": INT64_MAX, "valueTwo": INT64_MAX}
    return [{"names": [f"{r:04}{n:04}".ljust(name_length, "x") for n in range(names_each)],
             "action": "SCMP_ACT_ERRNO", "errnoRet": 4095, "args": [arg] * args} for r in range(count)]


def seccomp(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": schema.API_VERSION, "kind": schema.SECCOMP_PROFILE,
            "metadata": {"name": name, "namespace": NS}, "spec": {"defaultAction": "SCMP_ACT_ALLOW", **spec}}


def largest_seccomp() -> dict[str, Any]:
    obj = seccomp(dns_name(200), defaultAction="SCMP_ACT_ERRNO", defaultErrnoRet=4095,
                  architectures=schema.enum_of(schema.SECCOMP_PROFILE, "spec", "architectures", "[]"),
                  flags=schema.enum_of(schema.SECCOMP_PROFILE, "spec", "flags", "[]"),
                  baseProfileName=dns_name(253, "bundled/"), syscalls=rules(512, 8))
    obj["metadata"]["annotations"] = {f"note-{i}": "n" * 60_000 for i in range(4)}  # 240 KB of the 256 KiB allowed
    return obj


def largest_apparmor() -> dict[str, Any]:
    paths = [f"/{i:03}".ljust(512, "p") for i in range(256)]
    return {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE, "metadata": {"name": dns_name(200)},
            "spec": {"mode": "complain", "rules": {
                "filesystem": {"readOnlyPaths": paths, "writablePaths": paths, "deniedPaths": paths},
                "executables": paths,
                "network": {"families": schema.enum_of(schema.APPARMOR_PROFILE, "spec", "rules", "network",
                                                       "families", "[]")},
                "capabilities": schema.enum_of(schema.APPARMOR_PROFILE, "spec", "rules", "capabilities", "[]")}}}


def largest_binding() -> dict[str, Any]:
    key = dns_name(253) + "/" + "k" * 63
    values = [f"{i:02}".ljust(63, "v") for i in range(64)]
    return {"apiVersion": schema.API_VERSION, "kind": schema.PROFILE_BINDING,
            "metadata": {"name": dns_name(253), "namespace": NS},
            "spec": {"profileRef": {"kind": schema.SECCOMP_PROFILE, "name": dns_name(253)},
                     "selector": {"matchLabels": {f"{i:02}{key[2:]}": values[i] for i in range(64)},
                                  "matchExpressions": [{"key": key, "operator": "In", "values": values}] * 32},
                     "images": [f"{i:02}".ljust(512, "i") for i in range(64)],
                     "containers": [f"{i:02}".ljust(63, "c") for i in range(64)]}}


def path_of(obj: dict[str, Any]) -> str:
    return resource_path(obj["kind"], NS if schema.is_namespaced(obj["kind"]) else None)


@pytest.mark.parametrize("make", [largest_seccomp, largest_apparmor, largest_binding])
async def test_the_largest_object_the_limits_allow_is_stored(
        api: KubeApi, make: Callable[[], dict[str, Any]], report_figure: Callable[[str], None]) -> None:
    obj = make()
    size = len(json.dumps(obj))
    stored = await api.create(path_of(obj), obj)
    try:
        assert stored["spec"] == schema.with_defaults(obj["kind"], obj)["spec"]
        assert [f for f in schema.validate(obj) if "unknown" in f.message or "too" in f.message] == []
    finally:
        await api.delete(resource_path(obj["kind"], stored["metadata"].get("namespace"), stored["metadata"]["name"]))
    assert size < ETCD_REQUEST_LIMIT
    report_figure(f"largest {obj['kind']} within the limits: {size / 1024:.0f} KiB of JSON, stored "
                  f"(etcd limit {ETCD_REQUEST_LIMIT / 1024:.0f} KiB)")


OVER = {
    "513 rules": (lambda: seccomp("p", syscalls=rules(513, 1, 8, 0)), "spec.syscalls", "at most 512"),
    "4097 syscall names": (lambda: seccomp("p", syscalls=rules(5, 820, 8, 0)[:4] + rules(1, 817, 8, 0)),
                           "spec.syscalls", "at most 4096 in all rules"),
    "65-character syscall name": (lambda: seccomp("p", syscalls=rules(1, 1, 65, 0)), "spec.syscalls[0].names[0]",
                                  "64"),
    "seven arguments": (lambda: seccomp("p", syscalls=rules(1, 1, 8, 7)), "spec.syscalls[0].args", "6"),
    "argument value past int64": (lambda: seccomp("p", syscalls=[{"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
                                                                  "args": [{"index": 0, "op": "SCMP_CMP_EQ",
                                                                            "value": 2**63}]}]),
                                  "spec.syscalls[0].args[0].value", "integer"),
    "201-character name": (lambda: seccomp(dns_name(201)), "metadata.name", "200"),
    "policy over 64 KiB": (lambda: {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE,
                                    "metadata": {"name": "big"}, "spec": {"policy": "#" * 65537}},
                           "spec.policy", "65536"),
    "513-character path": (lambda: {"apiVersion": schema.API_VERSION, "kind": schema.APPARMOR_PROFILE,
                                    "metadata": {"name": "big"},
                                    "spec": {"rules": {"filesystem": {"readOnlyPaths": ["/" * 513]}}}},
                           "spec.rules.filesystem.readOnlyPaths[0]", "512"),
    "318-character label key": (lambda: {**largest_binding(), "spec": {
        "profileRef": {"kind": schema.SECCOMP_PROFILE, "name": "p"}, "selector": {"matchLabels": {"k" * 318: "v"}}}},
                                "spec.selector.matchLabels", "at most 317"),
    "2.4 MiB object": (lambda: seccomp("p", syscalls=rules(600, 50, 64, 6)), "spec.syscalls", "at most 512"),
}


@pytest.mark.parametrize("case", sorted(OVER))
async def test_past_a_limit_the_api_server_and_the_model_name_the_field(api: KubeApi, case: str) -> None:
    make, field, words = OVER[case]
    obj = make()
    assert len(json.dumps(obj)) < API_REQUEST_LIMIT
    with pytest.raises(ApiError) as refused:
        await api.create(path_of(obj), obj)
    assert refused.value.status == 422, refused.value
    assert field in refused.value.message and words in refused.value.message, refused.value.message
    assert [f for f in schema.validate(obj) if f.field == field], schema.validate(obj)


async def test_a_body_over_the_request_limit_gets_413_and_lint_names_the_field(api: KubeApi) -> None:
    obj = seccomp("huge", syscalls=rules(1200, 40, 64, 6))
    assert len(json.dumps(obj)) > API_REQUEST_LIMIT
    with pytest.raises(ApiError) as refused:
        await api.create(path_of(obj), obj)
    assert refused.value.status == 413 and "limit is 3145728" in refused.value.message, refused.value
    assert any(f.field == "spec.syscalls" and "at most 512" in f.message for f in schema.validate(obj))


@pytest.mark.slow  # up to 30 s: the quota controller discovers a new CRD's resource every 30 s
async def test_a_resource_quota_bounds_the_profiles_of_a_namespace(api: KubeApi) -> None:
    resource = "count/seccompprofiles.secprofiles.io"
    quota_path = f"/api/v1/namespaces/{NS}/resourcequotas"
    quota = {"metadata": {"name": "profiles"}, "spec": {"hard": {resource: "3"}}}
    try:
        # The quota controller discovers a new CRD's resource within 30 s; a quota made before that stays
        # "status unknown" until the 5-minute resync, so it is made again until the controller counts.
        made_at = [0.0]

        async def enforced() -> bool:
            found = await api.get(f"{quota_path}/profiles")
            if found is None:
                await api.create(quota_path, quota)
                made_at[0] = time.monotonic()
                return False
            if resource in (found.get("status") or {}).get("used", {}):
                return True
            if time.monotonic() - made_at[0] > 10:
                await api.delete(f"{quota_path}/profiles")
            return False

        await wait_for(enforced, within=90, what="quota usage computed by the controller")
        for index in range(3):
            await api.create(path_of(seccomp(f"q{index}")), seccomp(f"q{index}"))
        with pytest.raises(ApiError) as refused:
            await api.create(path_of(seccomp("q3")), seccomp("q3"))
        assert refused.value.status == 403 and "exceeded quota" in refused.value.message, refused.value
        assert resource in refused.value.message
    finally:
        await api.delete(f"{quota_path}/profiles")
        for index in range(3):
            await api.delete(resource_path(schema.SECCOMP_PROFILE, NS, f"q{index}"))
