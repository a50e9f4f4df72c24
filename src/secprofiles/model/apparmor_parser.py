"""Running ``apparmor_parser``: the syntax and name check both the CLI and the operator use.

Compiling (``-Q``) needs no privilege and no AppArmor in the kernel; loading is the node agent's job.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from secprofiles.model.findings import Finding

PARSER = "apparmor_parser"
NOT_INSTALLED = ("apparmor_parser is not installed (Debian package 'apparmor'): AppArmor policy syntax "
                 "was not checked")


def available() -> bool:
    """Whether the parser is on PATH."""
    return shutil.which(PARSER) is not None


async def _run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PARSER, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def check(text: bytes, profile_name: str) -> list[Finding]:
    """Compile ``text`` without loading it and confirm it defines exactly ``profile_name``.

    Must only be given text that passed ``apparmor.check_policy``: the parser follows includes.
    """
    with tempfile.TemporaryDirectory(prefix="secprofiles-aa-") as tmp:
        path = Path(tmp) / "policy"
        path.write_bytes(text)
        code, _, err = await _run("-Q", "-K", str(path))
        if code != 0:
            message = " ".join(line.strip() for line in err.splitlines() if "Cache" not in line)
            return [Finding("spec.policy", f"apparmor_parser rejected the policy: {message or f'exit {code}'}")]
        code, out, err = await _run("-N", "-K", str(path))
    names = out.split()
    if code != 0 or names != [profile_name]:
        found = ", ".join(names) or "none"
        return [Finding("spec.policy", f"the policy defines profiles {found}; expected exactly {profile_name!r}")]
    return []
