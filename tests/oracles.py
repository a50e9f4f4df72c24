"""What fuzzed outcomes are checked against: field paths that exist, and libseccomp compiling a node file."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import re
from typing import Any

from secprofiles.controller.admission import binding
from secprofiles.model import apparmor, libseccomp_filter, schema, seccomp
from secprofiles.model.evaluate import Outcome
from secprofiles.objects import Object

_WORKER: list[multiprocessing.pool.Pool] = []
COMPILE_TIMEOUT = 20.0


def compile_with_libseccomp(content: bytes) -> int:
    """``build_filter`` in a worker process: a libseccomp that never returns fails the case instead of the run."""
    if not _WORKER:
        _WORKER.append(multiprocessing.get_context("fork").Pool(1))
    try:
        return int(_WORKER[0].apply_async(build_filter, (content,)).get(COMPILE_TIMEOUT))
    except multiprocessing.TimeoutError:
        _WORKER.pop().terminate()
        raise AssertionError(f"libseccomp did not finish building the filter in {COMPILE_TIMEOUT} s: "
                             f"{content.decode()[:2000]}") from None


def build_filter(content: bytes) -> int:
    """The product's libseccomp build of a rendered node file, after checking the file's shape: OCI keys only,
    ``names`` lists (never the legacy ``name``), argument indices 0..5. Returns the BPF instruction count."""
    doc = json.loads(content)
    assert set(doc) <= {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls"}, doc.keys()
    for rule in doc.get("syscalls", []):
        assert isinstance(rule["names"], list) and "name" not in rule
        assert all(type(a["index"]) is int and 0 <= a["index"] <= 5 for a in rule.get("args", []))
    return libseccomp_filter.build_filter(doc)


_FIELD = re.compile(r"^([A-Za-z]|\[\")")
_PARTS = re.compile(r'\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|\.?([^.\[]+)')


def names_a_field(obj: Object, field: str) -> bool:
    """Whether ``field`` (``spec.syscalls[0].names``) is a path of ``obj``; its last part may be missing
    (a required field), and a finding inside a string (``spec.policy`` lines) names the string."""
    if not _FIELD.match(field):
        return False
    node: Any = obj
    parts = [int(index) if index else json.loads(quoted) if quoted else name
             for index, quoted, name in _PARTS.findall(field)]
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        in_list = isinstance(part, int) and isinstance(node, list) and part < len(node)
        if in_list or (isinstance(part, str) and isinstance(node, dict) and part in node):
            node = node[part]
        elif not (last and isinstance(node, dict)):
            return False
    return True


POD = {"metadata": {"namespace": "default", "labels": {"app": "web"}},
       "spec": {"containers": [{"name": "web", "image": "docker.io/library/nginx:1"}]}}


def check_outcome(obj: Object, outcome: Outcome) -> bool:
    """The model's side of one object; True when it was rejected. Nothing is rendered when rejected and every
    finding names a field of ``obj``; an accepted seccomp profile compiles with libseccomp, an AppArmor profile
    keeps its name, and the webhook decides on an accepted binding without crashing."""
    if outcome.findings:
        assert outcome.rendered is None
        for finding in outcome.findings:
            assert finding.message and names_a_field(obj, finding.field), (finding, obj)
        return True
    kind, meta = obj["kind"], obj["metadata"]
    if kind == schema.SECCOMP_PROFILE:
        assert isinstance(outcome.rendered, seccomp.Rendered)
        assert outcome.rendered.localhost_profile == f"secprofiles/{meta['namespace']}/{meta['name']}.json"
        compile_with_libseccomp(outcome.rendered.content)
    elif kind == schema.APPARMOR_PROFILE:
        assert isinstance(outcome.rendered, apparmor.Rendered)
        assert outcome.rendered.profile_name == meta["name"]
    else:
        item = binding.Binding.from_object(schema.with_defaults(kind, obj))
        binding.decide({**POD, "metadata": {**POD["metadata"], "namespace": meta["namespace"]}}, [item], {},
                       apparmor_field=True)
    return False
