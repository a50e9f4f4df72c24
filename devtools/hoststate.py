"""The machine-wide state a real node changes, recorded before it starts and compared after it stops, and the
clean-up of what outlives its processes.

A kubelet, containerd, the CNI bridge plugin and kube-proxy change things outside the cluster directory:
iptables/nft rules and chains, nfacct counters, the bridge and veths, network namespaces, mounts, ``kubepods``
cgroups in every hierarchy, sysctls (kubelet's ``setupKernelTunables``: ``vm.overcommit_memory``,
``kernel.panic``, ``kernel.panic_on_oops``; the bridge plugin: ``net.ipv4.ip_forward``) and a few hard-coded
paths (``/run/containerd/s`` shim sockets, ``/var/lib/kubelet/device-plugins``, ``/var/log/containers``,
``/var/lib/cni``). :func:`snapshot` records them; :func:`clean` removes what the node made, restoring sysctls and
deleting paths only if they were absent before; :func:`differences` compares two snapshots.

Invariant: the clean-up touches only what carries the node's names (``KUBE-*``/``CNI-*`` chains and the rules
jumping to them, rules with :data:`RULE_COMMENT`, the bridge and its veths, ``kubepods`` cgroups, mounts under the
cluster directory), so other users of the machine keep theirs. Differences are "ours" when they name those.
The pure parts (parsing, choosing, comparing) are separate from the commands that read and change the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: The comment on every iptables rule the real node adds itself (kube-proxy's and kubelet's are ``KUBE-*``).
RULE_COMMENT: Final = "secprofiles-realnode"
#: Chains made by kube-proxy, the kubelet and the CNI plugins.
OWN_CHAIN_PREFIXES: Final = ("KUBE-", "CNI-")
#: kube-proxy's nfnetlink_acct counters (KUBE-FORWARD's ``-m nfacct``), which ``kube-proxy --cleanup`` leaves.
NFACCT_COUNTERS: Final = ("ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts")
SYSCTLS: Final = (
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops", "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes", "net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.all.route_localnet", "net.ipv6.conf.all.forwarding", "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables", "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established", "net.netfilter.nf_conntrack_tcp_timeout_close_wait")
#: Paths a kubelet, containerd or CNI use whatever their configuration says (or would by default).
SYSTEM_PATHS: Final = (
    "/var/lib/kubelet", "/var/lib/containerd", "/run/containerd", "/var/lib/cni", "/var/log/containers",
    "/var/log/pods", "/opt/containerd", "/opt/cni", "/etc/cni/net.d", "/var/run/netns", "/run/netns",
    "/var/lib/secprofiles-agent", "/etc/kubernetes", "/run/secprofiles-realnode")
IPTABLES_TABLES: Final = ("filter", "nat", "mangle", "raw")
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
#: Sections whose every difference counts (nothing else on the machine should change them while a node runs).
ALWAYS_OURS: Final = ("sysctl", "paths", "nfacct", "iptables", "ip6tables", "nft")

Snapshot = dict[str, list[str]]
Runner = Callable[[Sequence[str]], str]


def run_text(argv: Sequence[str]) -> str:
    """A command's stdout ('' when the tool is missing or fails: a section then reads empty both times)."""
    if shutil.which(argv[0]) is None:
        return ""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    return result.stdout if result.returncode == 0 else ""


# --------------------------------------------------------------------------- recording (pure parsing + reads)


def normalise_iptables_save(text: str) -> list[str]:
    """iptables-save output without comments and packet counters (they change by themselves)."""
    return [re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if line and not line.startswith("#")]


def nft_tables(ruleset: str) -> list[str]:
    """``table FAMILY NAME`` lines of ``nft list ruleset``, with whether each holds a rule."""
    tables, current, has_rules = [], "", False
    for line in ruleset.splitlines():
        stripped = line.strip()
        if line.startswith("table "):
            current, has_rules = " ".join(line.split()[:3]), False
        elif line.startswith("}") and current:
            tables.append(f"{current} {'rules' if has_rules else 'empty'}")
            current = ""
        elif current and stripped and not stripped.startswith(("chain ", "type ", "policy ", "}", "set ", "map ",
                                                                   "flags ", "elements ", "comment ")):
            has_rules = True
    return sorted(tables)


def snapshot(run: Runner = run_text) -> Snapshot:
    """Record everything a real node may change."""
    sections: Snapshot = {
        "iptables": normalise_iptables_save(run(["iptables-save"])),
        "ip6tables": normalise_iptables_save(run(["ip6tables-save"])),
        "nft": nft_tables(run(["nft", "list", "ruleset"])),
        "nfacct": sorted(re.findall(r"name\s*=\s*(\S+?)\s*;", run(["nfacct", "list"]))),
        "links": sorted(" ".join(line.split(": ", 1)[1].split()[:1]) for line in run(["ip", "-o", "link"])
                        .splitlines() if ": " in line),
        "addresses": sorted(" ".join(line.split()[1:4]) for line in run(["ip", "-o", "addr"]).splitlines()),
        "routes": sorted(run(["ip", "route", "show", "table", "all"]).splitlines()),
        "netns": sorted(run(["ip", "netns", "list"]).splitlines()),
        "mounts": sorted(" ".join(line.split()[1:3]) for line in Path("/proc/mounts").read_text().splitlines()),
        "cgroups": cgroup_dirs(),
        "sysctl": [f"{key} = {read_sysctl(key)}" for key in SYSCTLS if read_sysctl(key) is not None],
        "paths": [f"{path} {'present' if os.path.lexists(path) else 'absent'}" for path in SYSTEM_PATHS],
    }
    return sections


def cgroup_dirs() -> list[str]:
    """First two levels under every cgroup hierarchy, and any ``kubepods`` tree."""
    found: set[str] = set()
    if not CGROUP_ROOT.is_dir():
        return []
    for hierarchy in CGROUP_ROOT.iterdir():
        if not hierarchy.is_dir():
            continue
        with contextlib.suppress(OSError):
            for child in hierarchy.iterdir():
                if child.is_dir():
                    found.add(str(child))
                    if child.name.startswith("kubepods"):
                        found.update(str(p) for p in child.rglob("*") if p.is_dir())
    return sorted(found)


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    """A sysctl's value, or None when this kernel has no such key."""
    try:
        return " ".join(_sysctl_path(key).read_text().split())
    except OSError:
        return None


def save(snap: Snapshot, path: Path) -> Path:
    """Write a snapshot as JSON."""
    path.write_text(json.dumps(snap, indent=1, sort_keys=True))
    return path


def load(path: Path) -> Snapshot:
    """Read a snapshot written by :func:`save`."""
    data = json.loads(path.read_text())
    return {str(k): [str(x) for x in v] for k, v in data.items()}


# --------------------------------------------------------------------------- comparing (pure)


@dataclass(frozen=True)
class Difference:
    """One section's added and removed lines; ``ours`` when they name the node's pieces."""

    section: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    ours: bool

    def __str__(self) -> str:
        lines = [f"{self.section} ({'ours' if self.ours else 'not ours: other users of the machine'}):"]
        lines += [f"  + {line}" for line in self.added[:20]] + [f"  - {line}" for line in self.removed[:20]]
        return "\n".join(lines)


def ours_pattern(cluster_dir: Path, bridge: str, extra: Iterable[str] = ()) -> re.Pattern[str]:
    """What names the node's pieces in a snapshot line."""
    names = [re.escape(str(cluster_dir)), re.escape(bridge), r"KUBE-", r"CNI-", r"kubepods", re.escape(RULE_COMMENT),
             r"/run/containerd", r"/var/log/containers", r"/var/lib/cni", r"/var/lib/kubelet", r"\bveth",
             *extra]
    return re.compile("|".join(names))


def differences(before: Mapping[str, Sequence[str]], after: Mapping[str, Sequence[str]],
                ours: re.Pattern[str]) -> list[Difference]:
    """Every section that differs (lines compared as sets), and whether the difference is the node's."""
    found = []
    for section in sorted(set(before) | set(after)):
        old, new = set(before.get(section, ())), set(after.get(section, ()))
        if old == new:
            continue
        added, removed = tuple(sorted(new - old)), tuple(sorted(old - new))
        mine = section in ALWAYS_OURS or any(ours.search(line) for line in (*added, *removed))
        found.append(Difference(section, added, removed, mine))
    return found


# --------------------------------------------------------------------------- choosing what to remove (pure)


def iptables_deletions(rules: str) -> list[list[str]]:
    """From ``iptables -t T -S``: the ``-D`` arguments of every rule that jumps to a KUBE-*/CNI-* chain or carries
    :data:`RULE_COMMENT`, then ``-F`` and ``-X`` of every KUBE-*/CNI-* chain."""
    deletions: list[list[str]] = []
    chains: list[str] = []
    for line in rules.splitlines():
        words = shlex.split(line)
        if len(words) >= 2 and words[0] == "-N" and words[1].startswith(OWN_CHAIN_PREFIXES):
            chains.append(words[1])
        elif len(words) >= 2 and words[0] == "-A":
            target = words[words.index("-j") + 1] if "-j" in words[:-1] else ""
            commented = "--comment" in words[:-1] and words[words.index("--comment") + 1] == RULE_COMMENT
            if target.startswith(OWN_CHAIN_PREFIXES) or commented:
                deletions.append(["-D", *words[1:]])
    deletions += [["-F", chain] for chain in chains]
    deletions += [["-X", chain] for chain in chains]
    return deletions


def sysctl_restores(before: Sequence[str], current: Mapping[str, str | None]) -> dict[str, str]:
    """The sysctls to write back: recorded before, different now."""
    restores = {}
    for line in before:
        key, _, value = line.partition(" = ")
        if key in current and current[key] is not None and current[key] != value:
            restores[key] = value
    return restores


def absent_before(before: Sequence[str]) -> set[str]:
    """The system paths that did not exist before the node started."""
    return {line.rsplit(" ", 1)[0] for line in before if line.endswith(" absent")}


def new_empty_nft_tables(before: Sequence[str], now: Sequence[str]) -> list[tuple[str, str]]:
    """(family, name) of nft tables that were not there before and hold no rule now (iptables-nft creates a table
    on first use)."""
    seen = {" ".join(line.split()[:3]) for line in before}
    result = []
    for line in now:
        words = line.split()
        if words[-1] == "empty" and " ".join(words[:3]) not in seen and words[1] in ("ip", "ip6"):
            result.append((words[1], words[2]))
    return result


# --------------------------------------------------------------------------- cleaning (changes the machine)


@dataclass
class Cleanup:
    """Removes what a stopped real node left; ``log`` says what it did."""

    cluster_dir: Path
    bridge: str
    before: Snapshot
    kube_binary: Path | None = None
    log: Callable[[str], None] = print

    def run(self) -> None:
        """Everything, in order: mounts, network, cgroups, sysctls, system paths."""
        self.unmount()
        self.network()
        self.cgroups()
        self.sysctls()
        self.system_paths()

    def unmount(self) -> None:
        """Every mount under the cluster directory, deepest first (lazily if busy): the kubelet's rshared root,
        tmpfs of projected volumes, network namespaces, overlay rootfs."""
        prefix = str(self.cluster_dir) + "/"
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted({m for m in mounts if m.startswith(prefix) or m == str(self.cluster_dir)}, reverse=True):
            if subprocess.run(["umount", mount], capture_output=True, check=False).returncode != 0:
                result = subprocess.run(["umount", "-l", mount], capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    self.log(f"cannot unmount {mount}: {result.stderr.strip()}")

    def network(self) -> None:
        """veths on the bridge, the bridge, kube-proxy's rules, own rules and chains, nfacct counters, empty nft
        tables iptables-nft created."""
        for line in run_text(["ip", "-o", "link", "show", "master", self.bridge]).splitlines():
            veth = line.split(": ")[1].split("@")[0]
            self.log(f"veth {veth} left on {self.bridge}: deleting")
            subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        if self.kube_binary is not None and self.kube_binary.exists():
            subprocess.run([str(self.kube_binary), "kube-proxy", "--cleanup"], capture_output=True, check=False,
                           timeout=120)
        for tool in ("iptables", "ip6tables"):
            for table in IPTABLES_TABLES:
                for deletion in iptables_deletions(run_text([tool, "-t", table, "-S"])):
                    result = subprocess.run([tool, "-t", table, *deletion], capture_output=True, text=True,
                                            check=False)
                    if result.returncode != 0:
                        self.log(f"{tool} -t {table} {shlex.join(deletion)}: {result.stderr.strip()}")
        for counter in NFACCT_COUNTERS:
            if run_text(["nfacct", "get", counter]):
                subprocess.run(["nfacct", "delete", counter], capture_output=True, check=False)
        for family, name in new_empty_nft_tables(self.before.get("nft", []), nft_tables(run_text(
                ["nft", "list", "ruleset"]))):
            subprocess.run(["nft", "delete", "table", family, name], capture_output=True, check=False)

    def cgroups(self) -> None:
        """``kubepods`` trees in every hierarchy, leaves first. Any process still in one (a container of a node that
        died without its clean-up: its shim killed, its processes orphaned) is killed first."""
        hierarchies = [h for h in CGROUP_ROOT.iterdir() if h.is_dir()] if CGROUP_ROOT.is_dir() else []
        for hierarchy in hierarchies:
            for procs in hierarchy.glob("kubepods*/**/cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    for pid in procs.read_text().split():
                        self.log(f"process {pid} still in {procs.parent}: SIGKILL")
                        os.kill(int(pid), signal.SIGKILL)
        for hierarchy in hierarchies:
            for top in hierarchy.glob("kubepods*"):
                for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        _rmdir_retrying(directory)
                try:
                    _rmdir_retrying(top, attempts=20)
                except OSError as error:
                    self.log(f"cannot remove {top}: {error}")

    def sysctls(self) -> None:
        """Write back every sysctl the node changed."""
        current = {key: read_sysctl(key) for key in SYSCTLS}
        for key, value in sysctl_restores(self.before.get("sysctl", []), current).items():
            try:
                _sysctl_path(key).write_text(value)
                self.log(f"sysctl {key} restored: {current[key]} -> {value}")
            except OSError as error:
                self.log(f"cannot restore sysctl {key}: {error}")

    def system_paths(self) -> None:
        """Hard-coded paths the node's programs use whatever their configuration: removed when absent before."""
        absent = absent_before(self.before.get("paths", []))
        containers = Path("/var/log/containers")
        if containers.is_dir():  # the kubelet's symlinks to pod logs (hard-coded directory)
            for link in containers.iterdir():
                if link.is_symlink() and os.readlink(link).startswith(str(self.cluster_dir) + "/"):
                    link.unlink()
        cni_cache = Path("/var/lib/cni")
        if cni_cache.is_dir():  # libcni's result cache (containerd 1.6 cannot move it)
            for cached in cni_cache.rglob("secprofiles-realnode-*"):
                with contextlib.suppress(OSError):
                    cached.unlink()
        for path in ("/run/containerd", "/var/lib/kubelet", "/var/log/containers", "/var/lib/cni",
                     "/run/secprofiles-realnode"):
            if path in absent and os.path.lexists(path):
                _remove_tree(Path(path), self.log)


def processes_naming(directory: Path, programs: Collection[str]) -> dict[int, str]:
    """Process ids and command lines of the node's programs (``programs``: basenames of ``argv[0]``) whose command
    line names ``directory``; never someone's shell, editor or ``make`` that happens to mention it."""
    found = {}
    needle = str(directory).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes()
        except OSError:
            continue
        if needle in argv and os.path.basename(argv.split(b"\0", 1)[0].decode(errors="replace")) in programs:
            found[int(cmdline.parent.name)] = argv.replace(b"\0", b" ").decode(errors="replace")[:300]
    return found


def _rmdir_retrying(directory: Path, attempts: int = 5) -> None:
    """rmdir a cgroup; a process just killed may take a moment to leave it (EBUSY). Raises the last error."""
    for attempt in range(attempts):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _remove_tree(path: Path, log: Callable[[str], None]) -> None:
    """Remove sockets, empty directories and files of a tree the node's programs made (never following links
    out of it)."""
    for child in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink()
    try:
        path.rmdir()
    except OSError as error:
        log(f"cannot remove {path}: {error}")
