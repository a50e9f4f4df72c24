"""What each node has, read from its NodeProfileStatus (``model.nodereport``): pure and incremental.

The operator's renderings (profile key -> the content hash it validated; a profile without one is invalid and no
node is asked to have it) give the expected digest of every bucket. The rules:

* A node *confirms* a profile's current hash when its reported digest of the profile's bucket equals the expected
  digest for that node at a moment when that hash is current: when the report arrives, or when the rendering
  changes and the node already reports the matching digest (agents often install before the operator validates).
* Confirmation is sticky: a later mismatch (another profile of the bucket changed and the node is still catching
  up) does not withdraw it. A new hash, the node leaving, its report deleted, or a report whose failure list was
  truncated does.
* The expected digest for a node is the bucket's digest without the profiles that node reports invalid while the
  operator has a rendering for them (the node processed nothing for them).
* A profile has *failed* on a node that lists it with its current hash or with ``""`` (invalid on the node), and
  every AppArmor profile has failed on a node without AppArmor.
* Installed on a node = confirmed and not failed; everything else is pending. Nothing a report says about keys
  that have no rendering, nor any malformed part of it, can make a profile count as installed.

Memory is bounded by what is in transition: unconfirmed (profile, node) pairs are kept, confirmed ones are not.
Every ``apply_*``/``set_*`` method returns the profile keys whose per-node view may have changed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from secprofiles.model import keys, nodereport
from secprofiles.model.nodereport import Digests, Report


@dataclass(frozen=True)
class NodeCounts:
    """A profile's current version across the desired nodes."""

    desired: int
    installed: int
    failed: dict[str, str]  # node -> message, sorted by node


@dataclass
class NodeView:
    """Desired nodes, their reports, the operator's renderings, and who confirmed what."""

    nodes: set[str] = field(default_factory=set)
    reports: dict[str, Report] = field(default_factory=dict)
    renderings: dict[str, str] = field(default_factory=dict)
    expected: Digests = field(default_factory=Digests)
    # key -> nodes that have not confirmed its current hash; bucket -> key -> those nodes (the same pairs)
    unconfirmed: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _by_bucket: defaultdict[str, dict[str, set[str]]] = field(default_factory=lambda: defaultdict(dict))

    # ------------------------------------------------------------------ inputs

    def set_renderings(self, renderings: Mapping[str, str | None]) -> set[str]:
        """New renderings (None: invalid or gone). The expected digests change first, then each node is checked
        once per touched bucket, so a batch (a restart) confirms what matches without any transient state."""
        changed: dict[str, str] = {}
        for key, content_hash in renderings.items():
            old = self.renderings.get(key)
            if old == content_hash:
                continue
            self.expected.replace(key, old, content_hash)
            self._unconfirm_key(key)
            if content_hash is None:
                self.renderings.pop(key, None)
            else:
                self.renderings[key] = content_hash
                changed[key] = content_hash
        buckets = {nodereport.bucket_of(key) for key in renderings}
        matching = {(node, bucket) for node in self.nodes for bucket in buckets if self._matches(node, bucket)}
        for key in changed:
            bucket = nodereport.bucket_of(key)
            for node in self.nodes:
                if (node, bucket) not in matching:
                    self._unconfirm(key, node)
        dirty = set(renderings)
        for node, bucket in matching:
            dirty |= self._confirm_waiting(node, bucket)
        return dirty

    def set_rendering(self, key: str, content_hash: str | None) -> set[str]:
        """One new rendering (see ``set_renderings``)."""
        return self.set_renderings({key: content_hash})

    def apply_node(self, node: str, desired: bool) -> set[str]:
        """A node joins or leaves the desired set (leaving forgets its confirmations)."""
        if desired == (node in self.nodes):
            return set()
        if desired:
            self.nodes.add(node)
            matching = {f"{b:02x}" for b in range(nodereport.BUCKETS) if self._matches(node, f"{b:02x}")}
            for key in self.renderings:
                if nodereport.bucket_of(key) not in matching:
                    self._unconfirm(key, node)
            return set(self.renderings)
        self.nodes.discard(node)
        for key in list(self.unconfirmed):
            self._confirm(key, node)
        return set(self.renderings)

    def apply_report(self, node: str, report: Report | None) -> set[str]:
        """A node's NodeProfileStatus changed (None: deleted). Kept for nodes not desired (yet) too."""
        old = self.reports.pop(node, None)
        if report is not None:
            self.reports[node] = report
        if node not in self.nodes:
            return set()
        dirty: set[str] = set()
        old_failures = old.failures if old else {}
        new_failures = report.failures if report else {}
        dirty |= {k for k in old_failures.keys() | new_failures.keys() if old_failures.get(k) != new_failures.get(k)}
        if (old.apparmor_enabled if old else True) != (report.apparmor_enabled if report else True):
            dirty |= {k for k in self.renderings if k.startswith(f"{keys.APPARMOR}/")}
        if report is None:  # a node that reports nothing has nothing confirmed (its Node is usually going too)
            for key in self.renderings:
                self._unconfirm(key, node)
            return dirty | set(self.renderings)
        if report.failures_truncated:
            if not (old and old.failures_truncated):  # it confirms nothing any more
                for key in self.renderings:
                    self._unconfirm(key, node)
                dirty |= set(self.renderings)
            return dirty
        for bucket in self._buckets():
            if old is None or old.failures_truncated or old.digests.get(bucket) != report.digests.get(bucket) \
                    or _invalid_in(old, bucket) != _invalid_in(report, bucket):
                dirty |= self._confirm_if_matching(node, bucket)
        return dirty

    # ------------------------------------------------------------------ output

    def counts(self, key: str) -> NodeCounts:
        """Installed and failed nodes for the current rendering of ``key`` (which must have one)."""
        content_hash = self.renderings[key]
        unconfirmed = self.unconfirmed.get(key, set())
        failed: dict[str, str] = {}
        installed = 0
        for node in sorted(self.nodes):
            message = self._failure(key, content_hash, node)
            if message is not None:
                failed[node] = message
            elif node not in unconfirmed:
                installed += 1
        return NodeCounts(len(self.nodes), installed, failed)

    def node_has(self, key: str, node: str) -> bool:
        """Whether ``node`` counts as having the current rendering of ``key`` installed."""
        return (key in self.renderings and node in self.nodes and node not in self.unconfirmed.get(key, set())
                and self._failure(key, self.renderings[key], node) is None)

    # ------------------------------------------------------------------ internals

    def _failure(self, key: str, content_hash: str, node: str) -> str | None:
        report = self.reports.get(node)
        if report is None:
            return None
        failure = report.failures.get(key)
        if failure is not None and failure.content_hash in (content_hash, ""):
            return failure.message or "failed"
        if not report.apparmor_enabled and key.startswith(f"{keys.APPARMOR}/"):
            return nodereport.APPARMOR_NOT_ENABLED
        return None

    def _buckets(self) -> Iterable[str]:
        return (f"{b:02x}" for b in range(nodereport.BUCKETS))

    def _expected_for(self, node: str, bucket: str) -> int:
        value = self.expected.of(bucket)
        for key in _invalid_in(self.reports[node], bucket):
            if key in self.renderings:
                value ^= nodereport.element(key, self.renderings[key])
        return value

    def _matches(self, node: str, bucket: str) -> bool:
        report = self.reports.get(node)
        return (report is not None and not report.failures_truncated
                and report.digests.get(bucket, 0) == self._expected_for(node, bucket))

    def _confirm_if_matching(self, node: str, bucket: str) -> set[str]:
        return self._confirm_waiting(node, bucket) if self._matches(node, bucket) else set()

    def _confirm_waiting(self, node: str, bucket: str) -> set[str]:
        """Confirm every key of ``bucket`` that waits for ``node`` (its digest matches)."""
        waiting = self._by_bucket.get(bucket, {})
        confirmed = {key for key, nodes in waiting.items() if node in nodes}
        for key in confirmed:
            self._confirm(key, node)
        return confirmed

    def _unconfirm(self, key: str, node: str) -> None:
        self.unconfirmed[key].add(node)
        self._by_bucket[nodereport.bucket_of(key)].setdefault(key, set()).add(node)

    def _confirm(self, key: str, node: str) -> None:
        nodes = self.unconfirmed.get(key)
        if nodes is None or node not in nodes:
            return
        nodes.discard(node)
        bucket = nodereport.bucket_of(key)
        self._by_bucket[bucket][key].discard(node)
        if not nodes:
            self._unconfirm_key(key)

    def _unconfirm_key(self, key: str) -> None:
        """Forget every unconfirmed pair of ``key``."""
        self.unconfirmed.pop(key, None)
        bucket = nodereport.bucket_of(key)
        waiting = self._by_bucket.get(bucket)
        if waiting is not None:
            waiting.pop(key, None)
            if not waiting:
                del self._by_bucket[bucket]


def _invalid_in(report: Report | None, bucket: str) -> frozenset[str]:
    """Keys of ``bucket`` the node reports invalid (hash ``""``): it processed nothing for them."""
    return report.invalid.get(bucket, frozenset()) if report is not None else frozenset()
