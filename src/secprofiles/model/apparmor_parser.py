"""Running ``apparmor_parser`` as the oracle for what the hand-written checks cannot know for sure.

Three answers, none needing privilege or AppArmor in the kernel:

* ``-p`` (preprocess) with an include path holding an empty stand-in for every include the checks allowed, and
  nothing else: the parser lists every file it includes (``##included <…>``) and fails on any other. So an
  include the checks did not see (a lexer difference) cannot pass, and no host file is read.
* ``-Q -K`` compiles for real (with the node's abstractions and tunables): syntax and semantics.
* ``-N`` lists the kernel names the text defines: exactly the profile and its children/hats (``name//…``).

Messages name the line of ``spec.policy`` (the rendered text has a header line before it).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from pathlib import Path

from secprofiles.model import apparmor, apparmor_syntax
from secprofiles.model.findings import Finding

PARSER = "apparmor_parser"
NOT_INSTALLED = ("apparmor_parser is not installed (Debian package 'apparmor'): AppArmor policy syntax "
                 "was not checked")
_ERROR = re.compile(r"AppArmor parser error(?: for \S+)?(?: in (?:profile )?\S+)? at line (\d+): ")
_MARKER = re.compile(r'^##(?:included|failed include|skipped duplicate include) (<[^>]*>|"[^"]*")\s*$')


def available() -> bool:
    """Whether the parser is on PATH."""
    return shutil.which(PARSER) is not None


async def _run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PARSER, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


_versions: list[str] = []


async def version() -> str:
    """The parser's version (``3.0.8``), asked once, for messages about what it lacks; empty when unknown."""
    if not _versions:
        code, out, _ = await _run("--version")
        match = re.search(r"version (\S+)", out) if code == 0 else None
        _versions.append(match[1] if match else "")
    return _versions[0]


def _message(err: str, code: int, line_offset: int) -> str:
    """The parser's stderr as one line, its line numbers moved to the policy's own."""
    lines = [line.strip() for line in err.splitlines() if line.strip() and "Cache read/write" not in line]
    text = " ".join(lines) or f"exit {code}"

    def relocate(match: re.Match[str]) -> str:
        return f"line {max(1, int(match[1]) - line_offset)}: "

    return _ERROR.sub(relocate, text)


def _includes_of(text: str) -> set[str]:
    """Include and abi targets as the checks read them."""
    found: set[str] = set()
    for statement in apparmor_syntax.tokenize(text):
        if statement.kind == apparmor_syntax.INCLUDE:
            found.add(statement.target)
        elif statement.kind == apparmor_syntax.RULE and statement.words[:1] == ["abi"] and len(statement.words) > 1:
            found.add(statement.words[1])
    return found


def _stand_ins(root: Path, targets: set[str]) -> None:
    """An empty file for every allowed include target under ``root`` (targets were checked: no '..')."""
    for target in targets:
        if apparmor.include_allowed(target):
            path = root / target[1:-1]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


async def check_includes(policy_path: Path, text: str, line_offset: int = 0) -> list[Finding]:
    """``-p`` against stand-ins: every file the parser includes must be one the checks saw and allowed."""
    seen = _includes_of(text)
    with tempfile.TemporaryDirectory(prefix="secprofiles-aa-inc-") as tmp:
        _stand_ins(Path(tmp), seen)
        code, out, err = await _run("-p", "-K", "-I", tmp, str(policy_path))
    findings = []
    followed = {m[1] for m in (_MARKER.match(line) for line in out.splitlines()) if m}
    for target in sorted(followed - {t for t in seen if apparmor.include_allowed(t)}):
        findings.append(Finding("spec.policy", f"the parser includes {target}, which is not an allowed include"))
    if code != 0 and "Could not open" in err:
        findings.append(Finding("spec.policy", f"apparmor_parser -p: {_message(err, code, line_offset)}; only "
                                               "<abstractions/…>, <tunables/…> and <abi/…> may be included"))
    return findings


async def defined_names(policy_path: Path) -> tuple[list[str], str]:
    """``-N``: the kernel names the policy defines, or an error message."""
    code, out, err = await _run("-N", "-K", str(policy_path))
    if code != 0:
        return [], _message(err, code, 0)
    return [line.strip() for line in out.splitlines() if line.strip()], ""  # one per line; names may hold spaces


async def check(text: bytes, profile_name: str, line_offset: int = 0) -> list[Finding]:
    """Confirm with the parser what ``apparmor.check_policy`` decided: includes, syntax, defined names.

    Must only be given text that passed ``apparmor.check_policy``. ``line_offset`` is the number of lines
    before the policy in ``text`` (the rendered header), so messages name the policy's own lines.
    """
    with tempfile.TemporaryDirectory(prefix="secprofiles-aa-") as tmp:
        path = Path(tmp) / "policy"
        path.write_bytes(text)
        findings = await check_includes(path, text.decode(errors="replace"), line_offset)
        if findings:
            return findings
        code, _, err = await _run("-Q", "-K", str(path))
        if code != 0:
            message = _message(err, code, line_offset)
            if "Could not open '" in message:  # an abi or abstraction this parser does not ship
                message += f" (not in this machine's AppArmor {await version() or 'installation'}; the nodes' " \
                           "parser needs it too)"
            return [Finding("spec.policy", f"apparmor_parser rejected the policy: {message}")]
        names, error = await defined_names(path)
    if error or not apparmor.defines_only(profile_name, names):
        found = ", ".join(names) or error or "none"
        return [Finding("spec.policy", f"the policy defines profiles {found}; expected {profile_name!r} and only "
                                       f"its own children and hats ({profile_name}//…)")]
    return []
