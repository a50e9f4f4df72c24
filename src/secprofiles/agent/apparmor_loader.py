"""Loading AppArmor profiles into the kernel, behind a small protocol so tests can simulate the kernel.

``KernelLoader`` runs ``apparmor_parser -r`` / ``-R`` against ``<host root>/sys/kernel/security/apparmor``.
``RecordingLoader`` is for machines whose kernel has no AppArmor (CI, this sandbox): it compiles with
``apparmor_parser -Q -K`` (the same syntax check, no kernel) and records what it would have loaded in the
host root's *simulated* securityfs file ``sys/kernel/security/apparmor/profiles``, in the kernel's own
``name (mode)`` format. Choice: the record lives where the kernel's list lives, so the agent reads loaded
profiles through the same code for both loaders, and, like kernel state, it survives an agent restart; a
test simulates a reboot (kernel state lost) by emptying that file. It refuses a host root of ``/``.

A policy defines one profile and possibly its children and hats (kernel names ``<name>//<child>``); they are
loaded, replaced and removed together with it, as the kernel does: replacing a profile replaces its children,
removing it removes them. The agent's own name check accepts exactly ``<name>`` plus ``<name>//…``.

``SourceStore`` keeps, under the agent's state directory, the text of every profile the agent loaded:
``apparmor_parser -R`` needs the text to remove a profile, and the store is also the agent's record of
which loaded profiles are its own (it never replaces one it did not load).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Protocol

from secprofiles.agent import files
from secprofiles.model import apparmor
from secprofiles.model.apparmor_parser import PARSER
from secprofiles.model.schema import is_dns1123_subdomain

SECURITYFS = Path("sys/kernel/security/apparmor")
SOURCE_SUFFIX = ".apparmor"


class LoadError(Exception):
    """apparmor_parser refused to load or remove a profile; the message is the parser's."""


class Loader(Protocol):
    """What the agent needs from the kernel's AppArmor."""

    async def load(self, name: str, text_path: Path, complain: bool) -> None:
        """Load or replace profile ``name`` from the policy file; raises LoadError."""

    async def remove(self, name: str, text_path: Path) -> None:
        """Unload profile ``name`` (the policy file names it); raises LoadError."""

    def loaded_names(self) -> set[str]:
        """Names of every profile loaded on the node, whoever loaded it."""


def apparmor_enabled(host_root: Path) -> bool:
    """AppArmor is usable on the node when its securityfs directory exists."""
    return (host_root / SECURITYFS).is_dir()


def read_profiles_file(path: Path) -> dict[str, str]:
    """Parse the kernel's ``profiles`` list: ``<name> (<mode>)`` per line, to name -> mode."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return {}
    loaded: dict[str, str] = {}
    for line in text.splitlines():
        name, _, mode = line.rstrip().rpartition(" (")
        if name:
            loaded[name] = mode.rstrip(")")
    return loaded


async def run_parser(*args: str) -> None:
    """Run apparmor_parser; a non-zero exit raises LoadError with its stderr."""
    process = await asyncio.create_subprocess_exec(PARSER, *args, stdin=asyncio.subprocess.DEVNULL,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    if process.returncode != 0:
        message = " ".join(line.strip() for line in err.decode(errors="replace").splitlines() if line.strip())
        raise LoadError(f"apparmor_parser {' '.join(args[:-1])} failed: {message or f'exit {process.returncode}'}")


async def verify(name: str, text_path: Path) -> list[str]:
    """The agent's own check before any load or removal, whatever the operator decided: the text must define
    exactly one top-level profile, named ``name``, plus only its own children and hats (``name//…``), and that
    name must be a DNS-1123 subdomain and no host or runtime profile. Returns the names it defines; raises
    LoadError."""
    problems = [str(f) for f in apparmor.check_name(name)]
    if not is_dns1123_subdomain(name):
        problems.append(f"{name!r} is not a DNS-1123 subdomain")
    if not problems:
        process = await asyncio.create_subprocess_exec(
            PARSER, "-N", "-K", str(text_path), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        names = [n.strip() for n in out.decode(errors="replace").splitlines() if n.strip()]
        if process.returncode != 0:
            message = " ".join(line.strip() for line in err.decode(errors="replace").splitlines()
                               if line.strip() and "Cache" not in line)
            problems.append(f"apparmor_parser -N failed: {message or f'exit {process.returncode}'}")
        elif not apparmor.defines_only(name, names):
            problems.append(f"the policy defines {', '.join(map(repr, names)) or 'no profile'}; expected exactly "
                            f"{name!r} and only its own children and hats ({name}//…)")
        else:
            return names
    raise LoadError(f"refusing to load AppArmor profile {name!r}: {'; '.join(problems)}")


class KernelLoader:
    """The real thing: needs CAP_MAC_ADMIN and the host's securityfs."""

    def __init__(self, host_root: Path) -> None:
        self.securityfs = host_root / SECURITYFS

    async def load(self, name: str, text_path: Path, complain: bool) -> None:
        """``apparmor_parser -r`` (``-C`` for complain mode), without the parser's cache."""
        await verify(name, text_path)
        await run_parser("-r", "-K", "-f", str(self.securityfs), *(["-C"] if complain else []), str(text_path))

    async def remove(self, name: str, text_path: Path) -> None:
        """``apparmor_parser -R``."""
        await verify(name, text_path)
        await run_parser("-R", "-K", "-f", str(self.securityfs), str(text_path))

    def loaded_names(self) -> set[str]:
        """The kernel's list of loaded profiles."""
        return set(read_profiles_file(self.securityfs / "profiles"))


class RecordingLoader:
    """Simulated kernel loading (see the module docstring): compiles for real, records instead of loading."""

    def __init__(self, host_root: Path) -> None:
        if os.path.realpath(host_root) == "/":
            raise ValueError("the recording loader simulates the kernel inside a test host root; it never writes "
                             "the real /sys/kernel/security")
        self.securityfs = host_root / SECURITYFS

    async def load(self, name: str, text_path: Path, complain: bool) -> None:
        """Compile with ``apparmor_parser -Q -K`` and record ``name (enforce|complain)`` and a line per child and
        hat, as the kernel lists them; children of an earlier version that are gone are dropped."""
        names = await verify(name, text_path)
        await run_parser("-Q", "-K", *(["-C"] if complain else []), str(text_path))
        self._update(name, names, "complain" if complain else "enforce")

    async def remove(self, name: str, text_path: Path) -> None:
        """Check the text is there (``-R`` would parse it: ``-Q -K`` does the same) and record the removal of
        the profile and its children."""
        await verify(name, text_path)
        await run_parser("-Q", "-K", str(text_path))
        self._update(name, [], None)

    def loaded_names(self) -> set[str]:
        """The simulated kernel's list."""
        return set(read_profiles_file(self.securityfs / "profiles"))

    def _update(self, name: str, names: list[str], mode: str | None) -> None:
        if not self.securityfs.is_dir():
            raise LoadError("AppArmor securityfs is missing")
        loaded = {n: m for n, m in read_profiles_file(self.securityfs / "profiles").items()
                  if n != name and not n.startswith(name + "//")}
        if mode is not None:
            loaded.update((n, mode) for n in names)
        text = "".join(f"{n} ({m})\n" for n, m in sorted(loaded.items()))
        fd = os.open(self.securityfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            files.write_at(fd, "profiles", text.encode())
        finally:
            os.close(fd)


class SourceStore:
    """``<state dir>/apparmor/<name>.apparmor``: the text of every profile this agent loaded."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "apparmor"

    def path(self, name: str) -> Path:
        """Where the text of ``name`` is kept (``name`` must be a DNS-1123 subdomain)."""
        if not is_dns1123_subdomain(name):
            raise files.UnsafePathError(f"AppArmor profile name {name!r} is not a DNS-1123 subdomain")
        return self.directory / f"{name}{SOURCE_SUFFIX}"

    def write(self, name: str, content: bytes) -> Path:
        """Keep ``content`` as the text of ``name`` (atomically); returns its path."""
        path = self.path(name)
        fd = files.open_dir(self.directory)
        try:
            files.write_at(fd, path.name, content)
        finally:
            os.close(fd)
        return path

    def read(self, name: str) -> bytes | None:
        """The kept text of ``name``, or None."""
        fd = files.open_dir(self.directory)
        try:
            return files.read_at(fd, self.path(name).name)
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        """Forget ``name``."""
        self.path(name).unlink(missing_ok=True)

    def names(self) -> set[str]:
        """Every profile this agent has loaded and not yet removed; leftover temp files are removed."""
        fd = files.open_dir(self.directory)
        try:
            names: set[str] = set()
            for entry in os.scandir(fd):
                if entry.name.startswith(files.TMP_PREFIX):
                    os.unlink(entry.name, dir_fd=fd)
                elif entry.name.endswith(SOURCE_SUFFIX) and entry.is_file(follow_symlinks=False):
                    names.add(entry.name.removesuffix(SOURCE_SUFFIX))
            return names
        finally:
            os.close(fd)
