"""YAML output people read: block style, multi-line strings as literal blocks, key order kept."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(obj: Any, comments: list[str] | None = None) -> str:
    """One YAML document, preceded by ``# comment`` lines."""
    head = "".join(f"# {line}\n" for line in comments or [])
    return head + yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)
