"""What fuzzed outcomes are checked against: field paths that exist, and libseccomp compiling a node file."""

from __future__ import annotations

import errno
import json
import multiprocessing
import multiprocessing.pool
import re
import tempfile
from typing import Any

import pyseccomp

from secprofiles import apparmor, binding, schema, seccomp
from secprofiles.profiles import Outcome

Object = dict[str, Any]

_ACTIONS = {"SCMP_ACT_ALLOW": pyseccomp.ALLOW, "SCMP_ACT_KILL": pyseccomp.KILL, "SCMP_ACT_KILL_THREAD": pyseccomp.KILL,
            "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS, "SCMP_ACT_TRAP": pyseccomp.TRAP,
            "SCMP_ACT_LOG": pyseccomp.LOG}
_OPS = {"SCMP_CMP_NE": pyseccomp.NE, "SCMP_CMP_LT": pyseccomp.LT, "SCMP_CMP_LE": pyseccomp.LE,
        "SCMP_CMP_EQ": pyseccomp.EQ, "SCMP_CMP_GE": pyseccomp.GE, "SCMP_CMP_GT": pyseccomp.GT,
        "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ}
_ARCHES = {"SCMP_ARCH_X86_64": "X86_64", "SCMP_ARCH_X86": "X86", "SCMP_ARCH_X32": "X32",
           "SCMP_ARCH_AARCH64": "AARCH64", "SCMP_ARCH_ARM": "ARM"}
BPF_MAXINSNS = 4096  # the kernel refuses a longer filter


def _action(name: str, errno_ret: int | None) -> int:
    if name == "SCMP_ACT_ERRNO":
        return int(pyseccomp.ERRNO(errno.EPERM if errno_ret is None else errno_ret))
    if name == "SCMP_ACT_TRACE":
        return int(pyseccomp.TRACE(errno.EPERM if errno_ret is None else errno_ret))
    return int(_ACTIONS[name])


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
    """Build the filter of a rendered node file the way runc does (libseccomp, rules equal to the default
    skipped, unknown names skipped, several conditions on one argument as separate rules); returns the BPF
    instruction count. Raises on anything libseccomp or the JSON types refuse."""
    doc = json.loads(content)
    assert set(doc) <= {"defaultAction", "defaultErrnoRet", "architectures", "flags", "syscalls"}, doc.keys()
    default = _action(doc["defaultAction"], doc.get("defaultErrnoRet"))
    seccomp_filter = pyseccomp.SyscallFilter(default)
    for arch in doc.get("architectures", []):
        native = getattr(pyseccomp.Arch, _ARCHES.get(arch, "NATIVE"))
        if not seccomp_filter.exist_arch(native):
            seccomp_filter.add_arch(native)
    for rule in doc.get("syscalls", []):
        assert isinstance(rule["names"], list) and "name" not in rule
        action = _action(rule["action"], rule.get("errnoRet"))
        if action == default:
            continue
        args = [pyseccomp.Arg(a["index"], _OPS[a["op"]], a.get("value", 0), a.get("valueTwo", 0))
                for a in rule.get("args", [])]
        assert all(type(a["index"]) is int and 0 <= a["index"] <= 5 for a in rule.get("args", []))
        indices = [a["index"] for a in rule.get("args", [])]
        groups = [[arg] for arg in args] if len(set(indices)) < len(indices) else [args]
        for name in rule["names"]:
            try:
                for group in groups:
                    seccomp_filter.add_rule(action, name, *group)
            except OSError as error:  # runc skips a name this libseccomp cannot place on the filter's arches
                if error.errno != errno.EINVAL or pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) >= 0:
                    raise
    with tempfile.TemporaryFile() as out:
        seccomp_filter.export_bpf(out)
        out.seek(0, 2)
        instructions = out.tell() // 8
    assert instructions <= BPF_MAXINSNS, f"{instructions} BPF instructions"
    return instructions


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
        assert outcome.rendered.relative_path == f"secprofiles/{meta['namespace']}/{meta['name']}.json"
        compile_with_libseccomp(outcome.rendered.content)
    elif kind == schema.APPARMOR_PROFILE:
        assert isinstance(outcome.rendered, apparmor.Rendered)
        assert outcome.rendered.profile_name == meta["name"]
    else:
        item = binding.Binding.from_object(schema.with_defaults(kind, obj))
        binding.decide({**POD, "metadata": {**POD["metadata"], "namespace": meta["namespace"]}}, [item], {},
                       apparmor_field=True)
    return False
