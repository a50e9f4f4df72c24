"""What validation reports: a field path and a reason a person can act on."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Finding:
    """One problem with one field of an object, e.g. ``spec.syscalls[0].names[1]: unknown syscall``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidProfileError(ValueError):
    """Raised when an object cannot be rendered; carries every finding, never a partial result."""

    def __init__(self, findings: Iterable[Finding]) -> None:
        self.findings = sorted(set(findings))
        super().__init__("; ".join(str(f) for f in self.findings))


def field_path(parts: Iterable[str | int]) -> str:
    """Join path parts the way ``kubectl explain`` and API errors spell them: ``spec.syscalls[0].names``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY.match(str(part)):
            text += f"[{json.dumps(str(part))}]"  # an empty key or one with '.', '[', spaces: quoted
        else:
            text += f".{part}" if text else part
    return text


_PLAIN_KEY = re.compile(r"^[^.\[\]\s\"]+$")
