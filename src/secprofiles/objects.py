"""``Object``: a Kubernetes object, or any part of one, as decoded JSON. The one alias every layer shares."""

from __future__ import annotations

from typing import Any

Object = dict[str, Any]
