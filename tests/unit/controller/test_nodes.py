"""The operator's reading of node reports (controller/nodes.py): when a node counts as having a profile.

Reports are built from the contract (tests/reports.py), never by the agent's code."""

from __future__ import annotations

from typing import Any

from secprofiles.controller.nodes import NodeCounts, NodeView
from secprofiles.model import nodereport
from secprofiles.model.nodereport import Report
from tests.reports import expected_buckets

KEYS = [f"seccomp/apps/p{i:03d}" for i in range(300)]


def report(processed: dict[str, str], **status: Any) -> Report:
    return Report.from_object({"status": {"buckets": expected_buckets(processed), **status}})


def same_bucket(key: str, count: int = 1) -> list[str]:
    """Other keys of ``key``'s bucket."""
    return [k for k in KEYS if k != key and nodereport.bucket_of(k) == nodereport.bucket_of(key)][:count]


def view(nodes: int = 2, renderings: dict[str, str] | None = None) -> NodeView:
    found = NodeView()
    for i in range(nodes):
        found.apply_node(f"n{i}", True)
    found.set_renderings(renderings if renderings is not None else dict.fromkeys(KEYS, "h1"))
    return found


def test_a_matching_digest_confirms_every_profile_of_its_bucket() -> None:
    nodes = view()
    assert nodes.counts(KEYS[0]) == NodeCounts(2, 0, {})
    everything = dict.fromkeys(KEYS, "h1")
    nodes.apply_report("n0", report(everything))
    assert nodes.counts(KEYS[0]) == NodeCounts(2, 1, {})
    nodes.apply_report("n1", report(everything))
    assert all(nodes.counts(key) == NodeCounts(2, 2, {}) for key in KEYS)
    assert not nodes.unconfirmed  # memory: nothing kept for what every node has


def test_confirmation_is_sticky_while_a_bucket_mate_changes_and_needs_the_new_hash() -> None:
    nodes = view(nodes=1)
    everything = dict.fromkeys(KEYS, "h1")
    nodes.apply_report("n0", report(everything))
    changed, mate = KEYS[0], same_bucket(KEYS[0])[0]
    nodes.set_rendering(changed, "h2")
    assert nodes.counts(changed).installed == 0  # a new hash needs a new confirmation
    assert nodes.counts(mate).installed == 1  # the node catching up on another key changes nothing for this one
    dirty = nodes.apply_report("n0", report(everything | {changed: "h2"}))
    assert dirty == {changed}
    assert nodes.counts(changed).installed == 1


def test_an_agent_ahead_of_the_operator_is_confirmed_when_the_rendering_arrives() -> None:
    nodes = view(nodes=1)
    nodes.apply_report("n0", report(dict.fromkeys(KEYS, "h1") | {KEYS[5]: "h2"}))
    assert nodes.counts(KEYS[5]).installed == 0  # the operator still expects h1
    assert nodes.set_rendering(KEYS[5], "h2") >= {KEYS[5]}
    assert nodes.counts(KEYS[5]).installed == 1


def test_garbage_and_reports_of_profiles_that_do_not_exist_confirm_nothing() -> None:
    nodes = view(nodes=1)
    garbage = Report.from_object({"status": {"buckets": {b: {"digest": "zz" * 16, "count": 1}
                                                          for b in expected_buckets(dict.fromkeys(KEYS, "h1"))}}})
    assert garbage.digests == {}
    nodes.apply_report("n0", garbage)
    assert all(nodes.counts(key).installed == 0 for key in KEYS)
    # A report that also claims a profile the cluster does not have: its bucket does not match.
    invented = "seccomp/apps/invented"
    nodes.apply_report("n0", report(dict.fromkeys(KEYS, "h1") | {invented: "h1"}))
    tainted = [k for k in KEYS if nodereport.bucket_of(k) == nodereport.bucket_of(invented)]
    assert tainted and all(nodes.counts(key).installed == 0 for key in tainted)
    # ... nor does a processed claim with the wrong hash (a fresh view: confirmations are sticky).
    fresh = view(nodes=1)
    fresh.apply_report("n0", report(dict.fromkeys(KEYS, "h1") | {KEYS[1]: "wrong"}))
    assert fresh.counts(KEYS[1]).installed == 0
    assert all(fresh.counts(k).installed == 0 for k in same_bucket(KEYS[1], 300))


def test_failures_with_the_current_or_no_hash_count_and_old_ones_do_not() -> None:
    nodes = view(nodes=2)
    everything = dict.fromkeys(KEYS, "h1")
    bad, invalid = KEYS[3], KEYS[4]
    nodes.apply_report("n0", report(everything, failures={bad: {"contentHash": "h1", "message": "disk full"}}))
    nodes.apply_report("n1", report({k: h for k, h in everything.items() if k != invalid},
                                    failures={invalid: {"contentHash": "", "message": "unknown syscall"}}))
    assert nodes.counts(bad) == NodeCounts(2, 1, {"n0": "disk full"})
    assert nodes.counts(invalid) == NodeCounts(2, 1, {"n1": "unknown syscall"})
    # The node left the invalid one out of its digest: its bucket mates are still confirmed on n1.
    assert all(nodes.counts(k).installed == 2 for k in same_bucket(invalid, 3))
    # A failure of an older rendering says nothing about the current one: pending, not failed.
    nodes.set_rendering(bad, "h2")
    assert nodes.counts(bad) == NodeCounts(2, 0, {})


def test_without_apparmor_every_apparmor_profile_has_failed_on_that_node() -> None:
    renderings = {"apparmor/demo": "a1", "seccomp/apps/p": "s1"}
    nodes = view(nodes=2, renderings=renderings)
    nodes.apply_report("n0", report(renderings))
    nodes.apply_report("n1", report(renderings, appArmorEnabled=False))
    assert nodes.counts("apparmor/demo") == NodeCounts(2, 1, {"n1": nodereport.APPARMOR_NOT_ENABLED})
    assert nodes.counts("seccomp/apps/p") == NodeCounts(2, 2, {})


def test_a_truncated_failure_list_confirms_nothing_on_that_node() -> None:
    nodes = view(nodes=1)
    nodes.apply_report("n0", report(dict.fromkeys(KEYS, "h1")))
    assert nodes.counts(KEYS[0]).installed == 1
    dirty = nodes.apply_report("n0", report(dict.fromkeys(KEYS, "h1"), failuresTruncated=True))
    assert dirty == set(KEYS)
    assert all(nodes.counts(key).installed == 0 for key in KEYS)


def test_a_restart_confirms_in_one_batch_and_a_joining_node_only_where_it_differs() -> None:
    nodes = NodeView()
    everything = dict.fromkeys(KEYS, "h1")
    for name in ("n0", "n1"):
        nodes.apply_node(name, True)
        nodes.apply_report(name, report(everything))
    nodes.set_renderings(everything)
    assert not nodes.unconfirmed and all(nodes.counts(key) == NodeCounts(2, 2, {}) for key in KEYS)
    late = KEYS[9]
    nodes.apply_report("n2", report(everything | {late: "h0"}))
    nodes.apply_node("n2", True)
    assert set(nodes.unconfirmed) == {late, *same_bucket(late, 300)}  # only its bucket waits
    assert nodes.counts(KEYS[9]) == NodeCounts(3, 2, {})
    nodes.apply_node("n2", False)
    assert not nodes.unconfirmed
