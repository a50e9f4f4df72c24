"""The NodeProfileStatus contract between a node's agent (writer) and the operator (reader).

One object per node, named after the Node and owned by it. Its size does not grow with the number of profiles:

* ``status.buckets``: every profile key falls in one of ``BUCKETS`` buckets (``bucket_of``). Per bucket the agent
  reports the *digest* of what it has processed - every profile of the bucket it holds a valid rendering of,
  installed or failed, as the set of ``(key, contentHash)`` pairs - and how many. The digest is the XOR of one
  128-bit element per pair (``element``), so both sides update it in O(1) per change and an empty bucket is 0
  (left out). The operator computes the same digest over the renderings it validated: equal digests mean the
  node has processed exactly the current version of every profile of the bucket.
* ``status.failures``: the exceptions, one entry per profile that is not installed although processed (an
  install or load error, with the hash it failed on) or that the node judges invalid (hash ``""``, left out of
  the digest). AppArmor profiles on a node without AppArmor are not listed: ``appArmorEnabled: false`` says it for
  all of them. At most ``MAX_FAILURES`` entries with messages of at most ``MAX_MESSAGE`` characters; past that
  ``failuresTruncated`` is true and the operator confirms nothing on that node.
* node facts: ``ready``, ``seccompAvailable``, ``appArmorEnabled``, ``agentVersion``, ``lastFullSync``, and
  ``summary`` counts (for people and ``kubectl get``; the operator does not read them).

Size: ``BUCKETS`` x ~60 bytes plus the failures: about 4 KiB for a healthy node whatever the number of profiles,
at most ~130 KiB with every failure slot used (``docs/status.md`` has the arithmetic). A profile change changes one
bucket: the agent sends one merge patch of ~100 bytes. The operator's rules for reading reports (a node counts as
installed for a profile only after one of its digests matched a set holding the profile's current hash) are in
``controller/nodes.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from secprofiles.model import schema

INSTALLED = "Installed"
ERROR = "Error"
NOT_READY_TAINT = "secprofiles.io/not-ready"
APPARMOR_NOT_ENABLED = "AppArmor not enabled on node"
BUCKETS = 64
MAX_FAILURES = 200
MAX_MESSAGE = 256
_ELEMENT_BYTES = 16


def bucket_of(key: str) -> str:
    """The bucket of a profile key: two hex digits, ``00`` to ``3f``."""
    return f"{hashlib.sha256(key.encode()).digest()[0] % BUCKETS:02x}"


def element(key: str, content_hash: str) -> int:
    """The digest element of one processed profile: 128 bits of sha256 over key and content hash."""
    return int.from_bytes(hashlib.sha256(f"{key}\0{content_hash}".encode()).digest()[:_ELEMENT_BYTES], "big")


def digest_text(value: int) -> str:
    """A digest as stored: 32 hex digits."""
    return f"{value:0{_ELEMENT_BYTES * 2}x}"


def parse_digest(text: object) -> int | None:
    """A stored digest, or None when it is not one (a garbage report confirms nothing)."""
    if not isinstance(text, str) or len(text) != _ELEMENT_BYTES * 2:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


@dataclass
class Digests:
    """Per-bucket XOR digests of a set of ``(key, contentHash)`` pairs, kept incrementally."""

    values: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def toggle(self, key: str, content_hash: str, sign: int) -> str:
        """Add (``sign`` 1) or remove (-1) one pair; returns its bucket."""
        bucket = bucket_of(key)
        value = self.values.get(bucket, 0) ^ element(key, content_hash)
        count = self.counts.get(bucket, 0) + sign
        if count:
            self.values[bucket], self.counts[bucket] = value, count
        else:
            self.values.pop(bucket, None)
            self.counts.pop(bucket, None)
        return bucket

    def replace(self, key: str, old: str | None, new: str | None) -> str:
        """``key`` goes from ``old`` to ``new`` (None: not in the set); returns its bucket."""
        bucket = bucket_of(key)
        if old != new:
            if old is not None:
                self.toggle(key, old, -1)
            if new is not None:
                self.toggle(key, new, 1)
        return bucket

    def of(self, bucket: str) -> int:
        """The digest of one bucket (0 when empty)."""
        return self.values.get(bucket, 0)

    def as_status(self, buckets: Iterable[str]) -> dict[str, dict[str, Any] | None]:
        """``status.buckets`` entries for ``buckets`` (None removes an emptied bucket in a merge patch)."""
        return {b: ({"digest": digest_text(self.values[b]), "count": self.counts[b]} if b in self.values else None)
                for b in buckets}


@dataclass(frozen=True)
class Failure:
    """A profile a node processed but does not have installed, or judges invalid (``content_hash`` "")."""

    content_hash: str
    message: str

    def as_status(self) -> dict[str, str]:
        """The JSON form stored under ``status.failures[key]``."""
        return {"contentHash": self.content_hash, "message": self.message}


@dataclass(frozen=True)
class Report:
    """What the operator reads of one NodeProfileStatus; anything malformed counts as not reported."""

    ready: bool
    apparmor_enabled: bool
    digests: Mapping[str, int]
    failures: Mapping[str, Failure]
    failures_truncated: bool
    invalid: Mapping[str, frozenset[str]]  # bucket -> keys the node judges invalid (failures with hash "")

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Report:
        """Parse ``obj``'s status, dropping what is not well-formed (a bucket without a valid digest, a failure
        that is not an object): such parts confirm nothing."""
        status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        assert isinstance(status, dict)
        buckets = status.get("buckets") if isinstance(status.get("buckets"), dict) else {}
        failures = status.get("failures") if isinstance(status.get("failures"), dict) else {}
        assert isinstance(buckets, dict) and isinstance(failures, dict)
        digests = {b: d for b, value in buckets.items() if isinstance(value, dict)
                   and (d := parse_digest(value.get("digest"))) is not None}
        parsed = {key: Failure(str(value.get("contentHash", "")), str(value.get("message", "")))
                  for key, value in failures.items() if isinstance(value, dict)}
        invalid: dict[str, set[str]] = {}
        for key, failure in parsed.items():
            if not failure.content_hash:
                invalid.setdefault(bucket_of(key), set()).add(key)
        return cls(ready=status.get("ready") is True, apparmor_enabled=status.get("appArmorEnabled") is not False,
                   digests=digests, failures=parsed, failures_truncated=status.get("failuresTruncated") is True,
                   invalid={bucket: frozenset(found) for bucket, found in invalid.items()})


def new_object(node: dict[str, Any]) -> dict[str, Any]:
    """A NodeProfileStatus for ``node`` (a Node object), owned by it so it goes away with it."""
    name = node["metadata"]["name"]
    return {"apiVersion": schema.API_VERSION, "kind": schema.NODE_PROFILE_STATUS,
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
            "spec": {"nodeName": name}}
