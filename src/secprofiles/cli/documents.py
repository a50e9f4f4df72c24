"""Reading YAML files of objects, keeping line numbers so findings point at ``file:line``."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Document:
    """One YAML document of a file."""

    path: str
    line: int
    obj: Any
    node: yaml.Node

    def line_of(self, field: str) -> int:
        """The line of ``field`` (e.g. ``spec.syscalls[0].names[1]``), or of its nearest parent that exists."""
        node = self.node
        for part in re.findall(r"[^.\[\]]+", field):
            child = _child(node, part)
            if child is None:
                break
            node = child
        return node.start_mark.line + 1


def _child(node: yaml.Node, part: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        return next((value for key, value in node.value if key.value == part), None)
    if isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
        child: yaml.Node = node.value[int(part)]
        return child
    return None


class DocumentError(Exception):
    """A file that cannot be read or parsed; the message says where and why."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")


def load_text(text: str, path: str) -> list[Document]:
    """Every non-empty document of one YAML text."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        documents = []
        for node in nodes:
            if node is None:
                continue
            constructor = yaml.SafeLoader("")
            documents.append(Document(path, node.start_mark.line + 1, constructor.construct_document(node), node))
        return documents
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 1
        raise DocumentError(path, line, f"YAML syntax error: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise DocumentError(path, 1, f"YAML error: {error}") from None


def load_file(path: Path) -> list[Document]:
    """Every document of a YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DocumentError(str(path), 0, f"cannot read file: {getattr(error, 'strerror', None) or error}") from None
    return load_text(text, str(path))


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files given directly, plus the YAML files below given directories, in a stable order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in YAML_SUFFIXES)
        else:
            files.append(path)
    return files
