"""Profiles the model accepts but libseccomp or the kernel would refuse are refused, naming the field."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import pytest
import yaml

from secprofiles.model import bundled, libseccomp_filter, syscalls
from secprofiles.model.evaluate import evaluate, evaluate_sync
from secprofiles.model.libseccomp_filter import BPF_MAXINSNS, FilterBuilder
from tests.conftest import REPO

# Comparisons libseccomp cannot merge: every rule costs instructions. Distinct syscalls, one rule each (several
# non-equality rules for one syscall make libseccomp 2.5 take minutes: the timeout test covers that).
_OPS = ["SCMP_CMP_GT", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE", "SCMP_CMP_GE", "SCMP_CMP_LE"]
_SYSCALLS = sorted(name for rule in bundled.with_bundled(lambda namespace, name: None)(
    "default", "bundled/runtime-default")["syscalls"] for name in rule["names"]
    if syscalls.is_known(name, ["SCMP_ARCH_X86_64"]))


def seccomp_profile(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "secprofiles.io/v1alpha1", "kind": "SeccompProfile",
            "metadata": {"name": "p", "namespace": "default"}, "spec": spec}


def multiplexed_socket_rule(architectures: list[str]) -> dict[str, Any]:
    """Found by the nightly fuzz: on 32-bit x86 ``socket`` goes through ``socketcall``; a conditional rule over
    the base's unconditional one with another action makes libseccomp answer EEXIST."""
    return seccomp_profile({
        "defaultAction": "SCMP_ACT_ERRNO", "baseProfileName": "bundled/runtime-default",
        "architectures": architectures,
        "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_KILL",
                      "args": [{"index": 0, "op": "SCMP_CMP_NE", "value": 0}]}]})


def many_conditions(rules: int) -> dict[str, Any]:
    return seccomp_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": [name], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": i, "op": _OPS[i], "value": (k + 1) * 2**33 + i, "valueTwo": (k + 1) * 2**33 + i}
                  for i in range(6)]}
        for k, name in enumerate(_SYSCALLS[:rules])]})


def test_conditional_rule_on_a_multiplexed_syscall_is_refused_naming_the_rule() -> None:
    (finding,) = evaluate_sync(multiplexed_socket_rule(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])).findings
    assert finding.field == "spec.syscalls[0].names[0]"
    assert "libseccomp refuses the rule" in finding.message and "multiplexed" in finding.message
    # Without 32-bit x86 the same rules build: the check refuses what libseccomp refuses, not a pattern.
    outcome = evaluate_sync(multiplexed_socket_rule(["SCMP_ARCH_X86_64"]))
    assert outcome.findings == () and outcome.rendered is not None


def test_a_filter_longer_than_the_kernel_allows_is_refused() -> None:
    small = evaluate_sync(many_conditions(60))
    assert small.rendered is not None
    assert libseccomp_filter.build_filter(json.loads(small.rendered.content)) <= BPF_MAXINSNS
    (finding,) = evaluate_sync(many_conditions(150)).findings
    assert finding.field == "spec.syscalls"
    assert f"the kernel accepts at most {BPF_MAXINSNS}" in finding.message


def test_native_checks_off_renders_without_building() -> None:
    outcome = evaluate_sync(multiplexed_socket_rule(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]),
                                     native_checks=False)
    assert outcome.rendered is not None


def test_every_bundled_seccomp_profile_builds() -> None:
    for path in sorted((REPO / "profiles/seccomp").glob("*.yaml")):
        obj = yaml.safe_load(path.read_text())
        obj["metadata"].setdefault("namespace", "default")
        outcome = evaluate_sync(obj)
        assert outcome.findings == (), (path, outcome.findings)


def test_a_worker_that_hangs_is_killed_and_the_profile_refused() -> None:
    builder = FilterBuilder(timeout=0.5, command=[sys.executable, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    refusal = builder.check(b'{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert refusal is not None and "did not finish building the filter within 0.5 s" in refusal.reason
    assert time.monotonic() - started < 5
    assert builder._worker is None  # killed, not left running
    assert builder.cached(b'{"defaultAction": "SCMP_ACT_ALLOW"}') == (False, None)  # a time-out is asked again


def test_an_idle_worker_exits_and_the_next_check_starts_another() -> None:
    command = [sys.executable, "-c", "from secprofiles.model.libseccomp_filter import serve; serve(idle_exit=0.2)"]
    builder = FilterBuilder(command=command)
    try:
        assert builder.check(b'{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}') is None
        first = builder._worker
        assert first is not None
        first.wait(timeout=5)  # exits by itself
        refusal = builder.check(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO"}], "architectures": ["SCMP_ARCH_X86_64"]}).encode())
        assert refusal is None and builder._worker is not first
    finally:
        builder.close()


@pytest.mark.parametrize("content", [b'{"defaultAction": "SCMP_ACT_ERRNO"}', b'{"defaultAction": "SCMP_ACT_LOG"}'])
def test_answers_are_cached_by_content(content: bytes) -> None:
    builder = FilterBuilder()
    try:
        assert builder.check(content) is None
        worker = builder._worker
        assert worker is not None
        worker.kill()
        worker.wait()
        assert builder.check(content) is None  # from the cache: the dead worker was not asked
        assert builder._worker is worker
    finally:
        builder.close()


def test_a_rendering_the_operator_validated_skips_the_build() -> None:
    """Agents pass the operator's published contentHash: that exact rendering passed these checks already."""
    refused = multiplexed_socket_rule(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
    rendered = evaluate_sync(refused, native_checks=False).rendered
    assert rendered is not None
    trusted = asyncio.run(evaluate(refused, validated_hash=rendered.content_hash))
    assert trusted.rendered == rendered  # what the operator vouched for (it never publishes a refused hash)
    other = asyncio.run(evaluate(refused, validated_hash="sha256:" + "0" * 64))
    assert other.rendered is None and other.findings
