"""Reading a NodeProfileStatus in tests, from the contract alone (``model.nodereport``), not from the code under
test: the buckets a set of processed ``(key, contentHash)`` must produce, and the failures listed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secprofiles.model import nodereport


def expected_buckets(processed: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """What ``status.buckets`` must hold for exactly these processed (key, content hash) pairs."""
    digests: dict[str, int] = {}
    counts: dict[str, int] = {}
    for key, content_hash in processed.items():
        bucket = nodereport.bucket_of(key)
        digests[bucket] = digests.get(bucket, 0) ^ nodereport.element(key, content_hash)
        counts[bucket] = counts.get(bucket, 0) + 1
    return {b: {"digest": nodereport.digest_text(d), "count": counts[b]} for b, d in digests.items()}


def bucket_holds(status: Mapping[str, Any], processed: Mapping[str, str], key: str) -> bool:
    """Whether the status's bucket of ``key`` is exactly the digest of ``processed`` restricted to that bucket
    (``processed`` must name every profile the node should have processed, of every namespace)."""
    bucket = nodereport.bucket_of(key)
    mine = {k: h for k, h in processed.items() if nodereport.bucket_of(k) == bucket}
    return (status.get("buckets") or {}).get(bucket) == expected_buckets(mine).get(bucket)


def failure(status: Mapping[str, Any], key: str) -> dict[str, str] | None:
    """The failure listed for ``key``, if any."""
    found: dict[str, str] | None = (status.get("failures") or {}).get(key)
    return found
